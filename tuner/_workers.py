"""Who runs a trial, and whether that process is gone (for resuming after a kill).

Three signs of life, from fastest to slowest:

- on this host, the owner's pid and start time (psutil): a dead worker is noticed at once;
- on an RDB storage (SQLite, PostgreSQL, MySQL), Optuna's own heartbeat: ``study.optimize``
  runs a thread that records one every ``interval_s`` while the objective runs (however long
  an epoch takes), and ``optuna.storages.fail_stale_trials`` fails a trial whose last one is
  older than ``grace_period_s``, judged by the database's clock;
- on storages without heartbeats (the journal file), a thread of ours stores the time in the
  trial's ``heartbeat`` user attr every ``interval_s``; another host's trial is gone after
  ``grace_period_s`` without one.

Phases 3 and 4 are claimed by a study user attr, kept fresh by the same kind of thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import psutil
from optuna.storages import RDBStorage

logger = logging.getLogger(__name__)

WORKER_ATTR = "worker"
HEARTBEAT_ATTR = "heartbeat"
HOST_ENV = "REDHEART_WORKER_HOST"
# How many times this process has re-executed itself (run_study.py, after a lost call): the
# pid and start time stay the same through os.execv, so the count tells this incarnation's
# trials and claims from the last one's.
INCARNATION_ENV = "REDHEART_INCARNATION"
HEARTBEAT_INTERVAL_S = 60
GRACE_FACTOR = 3  # grace period = 3 x the interval unless given
POLL_S = 2.0  # how often a worker waiting on another one looks at the storage


@dataclass(frozen=True)
class Heartbeat:
    """How often a worker shows it is alive, and how long another waits before taking over.

    ``by_storage``: the storage records Optuna's heartbeats (an RDB storage opened with a
    ``heartbeat_interval``), so other hosts' trials are judged by Optuna, not by us.
    """

    interval_s: int = HEARTBEAT_INTERVAL_S
    grace_period_s: int | None = None  # None: GRACE_FACTOR x interval_s
    by_storage: bool = False

    def __post_init__(self) -> None:
        if self.interval_s < 1:
            raise ValueError(f"heartbeat interval must be >= 1 s, got {self.interval_s!r}")
        if self.grace_period_s is not None and self.grace_period_s <= self.interval_s:
            raise ValueError(f"grace period must be longer than the heartbeat interval "
                             f"({self.interval_s} s), got {self.grace_period_s!r}")

    @property
    def grace_s(self) -> int:
        return self.grace_period_s if self.grace_period_s is not None else GRACE_FACTOR * self.interval_s


def storage_heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    """Whether Optuna records heartbeats in ``storage`` (public RDBStorage API)."""
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def fail_stale_by_storage(study: optuna.Study, hb: Heartbeat) -> list[int]:
    """Optuna's stale-trial check where the storage records heartbeats (``hb.by_storage``);
    returns the numbers of the trials it failed."""
    if not hb.by_storage:
        return []
    running = {t.number for t in study.get_trials(deepcopy=False,
                                                  states=(optuna.trial.TrialState.RUNNING,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = [t.number for t in study.get_trials(deepcopy=False,
                                                 states=(optuna.trial.TrialState.FAIL,))
              if t.number in running]
    for number in failed:
        logger.warning("%s: trial %d sent no heartbeat for over the grace period (its worker "
                       "is gone): Optuna marked it failed; its work is taken over",
                       study.study_name, number)
    return failed


def _host() -> str:
    # Containers that share a hostname but not a pid namespace must name themselves apart,
    # or one would judge the other by a pid it cannot see.
    return os.environ.get(HOST_ENV) or socket.gethostname()


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (guards against pid reuse), from psutil on every OS;
    None when it does not exist; "" when it exists but the OS will not say when it started."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # AccessDenied and the like: alive, start unknown
        return ""


def incarnation() -> int:
    """How many times this process has re-executed itself (0: never)."""
    try:
        return max(0, int(os.environ.get(INCARNATION_ENV, "0")))
    except ValueError:
        return 0


def worker_id() -> str:
    """host:pid:start-time of this process, with /n after its n-th re-execution."""
    pid = os.getpid()
    n = incarnation()
    return f"{_host()}:{pid}:{_start_time(pid)}" + (f"/{n}" if n else "")


class TrialLost(Exception):
    """This worker's trial is no longer its own: another worker found it silent (its
    heartbeat thread died, say, on a database error) and failed it to take its work over."""


def check_still_mine(study: optuna.Study, number: int) -> None:
    """Raise :class:`TrialLost` unless trial ``number`` still RUNs. Called at epoch
    boundaries: a worker whose trial another worker failed (to take its work over in a
    trial of its own) stops before it writes anything more."""
    t = study.get_trials(deepcopy=False)[number]  # trial numbers are positions
    if t.state != optuna.trial.TrialState.RUNNING:
        raise TrialLost(f"trial {number} of {study.study_name} is {t.state.name}: another "
                        "worker took it over")


def trial_is_gone(t: optuna.trial.FrozenTrial, hb: Heartbeat) -> bool:
    """``is_gone`` for a (frozen) RUNNING trial."""
    started = t.datetime_start.timestamp() if t.datetime_start is not None else None
    last = t.user_attrs.get(HEARTBEAT_ATTR, started)
    return is_gone(t.user_attrs.get(WORKER_ATTR), last, hb.grace_s, by_storage=hb.by_storage)


def is_gone(worker: str | None, last_sign: float | None, grace_s: float,
            by_storage: bool = False) -> bool:
    """True when the worker that owns a RUNNING trial (or a claim) can no longer finish it.

    On this host: its process is dead (or the pid was reused). On another host: when the
    storage records heartbeats (``by_storage``), never by us (Optuna fails the trial);
    otherwise when its last sign of life (``last_sign``, epoch seconds) is older than
    ``grace_s``. A trial with no worker yet counts as on another host.
    """
    host, _, rest = (worker or "").partition(":")
    if not worker or host != _host():
        if by_storage:
            return False
        return last_sign is None or time.time() - last_sign > grace_s
    pid_text, _, started = rest.partition(":")
    started = started.partition("/")[0]
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid == os.getpid():
        # This very process, or an incarnation of it from before it re-executed itself: that
        # one's threads (its trial's heartbeat among them) ended with the exec.
        return worker != worker_id()
    current = _start_time(pid)
    if current is None:
        return True
    # Without both start times (the OS would not say) a live pid counts as the worker.
    return current != "" and started not in ("", "None") and current != started


def fail_stale_trials(study: optuna.Study, hb: Heartbeat) -> list[optuna.trial.FrozenTrial]:
    """Mark RUNNING trials whose worker is gone as FAIL: Optuna's heartbeat check where the
    storage records heartbeats, then ours (``Study.tell`` by trial number); returns ours."""
    fail_stale_by_storage(study, hb)
    stale = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial_is_gone(t, hb):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            logger.warning("%s: trial %d (params %s) was left running by a process that is gone: "
                           "marked failed; its work is taken over", study.study_name, t.number, t.params)
            stale.append(t)
    return stale


@contextmanager
def beating(beat: Callable[[], None], interval_s: float, what: str) -> Iterator[None]:
    """Call ``beat`` now and every ``interval_s`` in a daemon thread until the block ends.

    A beat that fails (the storage briefly unreachable) is logged and retried next time;
    the block itself is never interrupted.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                beat()
            except Exception as e:  # a heartbeat must not kill the run
                logger.warning("heartbeat of %s failed: %s: %s", what, type(e).__name__, e)

    beat()
    thread = threading.Thread(target=loop, name=f"heartbeat {what}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def trial_heartbeat(trial: optuna.Trial, hb: Heartbeat) -> Iterator[None]:
    """Keep ``trial`` alive in the eyes of other hosts: nothing to do where Optuna's
    heartbeat thread runs (``study.optimize`` on an RDB storage with heartbeats), our
    ``heartbeat`` user attr elsewhere."""
    if hb.by_storage:
        yield
        return
    with beating(lambda: trial.set_user_attr(HEARTBEAT_ATTR, time.time()), hb.interval_s,
                 f"trial {trial.number}"):
        yield
