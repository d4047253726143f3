"""Riding out a database outage: a PostgreSQL (or MySQL) storage whose server goes away for
a while (a restart, a failover) keeps the run waiting instead of killing it.

Two layers, both through public APIs:

- SQLAlchemy's ``do_connect`` event: while the server is down, opening a connection is
  retried with bounded exponential backoff, and pooled connections are pinged before use,
  so every storage call (Optuna's heartbeat thread and stale-trial checks included) that
  starts during an outage waits for the server instead of failing;
- ``PatientRDBStorage``, an ``RDBStorage`` (so Optuna still sees a storage with
  heartbeats): a public call whose connection dropped while its statement ran is retried.
  A write that may have committed before the drop is checked first: a trial whose state
  was set is not set again (``UpdateFinishedTrialError``), a study that was created is not
  created twice.

Not retried here: Optuna's study cache calls a few methods of the storage that are not
public (creating a trial, setting a parameter, listing trials); one of those whose statement
is in flight at the moment the server goes away fails (Optuna retries a trial's creation 5
times in a few seconds, then gives up). ``run_study.py`` then waits for the database with
``wait_until_answers`` and runs its command again in the same process, as a rerun would (it
exits 2 with one line when the database stays away past the patience). An outage that
begins between calls, the common case, is ridden out in the call.

An outage longer than the patience raises :class:`StorageUnavailable` (a ValueError, so
the command line prints one line and exits 2); from then on every call fails at once, so
Optuna's cleanup of the trial does not wait a second patience.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import event, exc

logger = logging.getLogger(__name__)

# Long enough for a server restart or a failover (the outages seen: 3-40 s), and shorter
# than the default grace period (180 s) after which another worker takes a silent worker's
# trial over. The two can still meet: the last heartbeat may be up to one interval (60 s)
# older than the outage, and a worker that comes back to a trial failed meanwhile stops it
# at its next epoch boundary (tuner._workers.check_still_mine).
DEFAULT_PATIENCE_S = 120.0
_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 4.0  # a reconnect is cheap: a server back is noticed within 4 s

T = TypeVar("T")


class StorageUnavailable(ValueError):
    """The storage's server stayed unreachable for longer than the patience."""


# SQLSTATE classes of a lost or refused connection: 08 (connection exception) and 57P
# (the server shutting down or starting: admin shutdown, crash shutdown, cannot connect
# now); MySQL's client errors 2002/2003/2006/2013 (cannot connect, server gone, lost).
_SQLSTATES = ("08", "57P")
_MYSQL_ERRORS = (2002, 2003, 2006, 2013)
_WORDS = ("connection refused", "could not connect", "server closed the connection",
          "terminating connection", "connection is closed", "the database system is",
          "lost connection", "server has gone away", "can't connect")


def _lost(e: BaseException) -> bool:
    state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
    if isinstance(state, str) and state.startswith(_SQLSTATES):
        return True
    args = getattr(e, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_ERRORS:
        return True
    text = str(e).lower()
    return any(w in text for w in _WORDS)


def is_connection_error(e: BaseException | None) -> bool:
    """Whether ``e`` (or what caused it) is a lost or refused database connection, not a
    bad statement, a deadlock or a timeout: worth waiting for."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, exc.DisconnectionError):
            return True
        if isinstance(e, exc.DBAPIError) and e.orig is not None and _lost(e.orig):
            return True
        if type(e).__module__.startswith(("psycopg", "pymysql")) and _lost(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


class Outage:
    """The patience of one storage: when the current outage began, whether it was logged,
    and whether the worker gave up on it."""

    def __init__(self, shown_url: str, patience_s: float):
        if patience_s <= 0:
            raise ValueError(f"storage patience must be > 0 s, got {patience_s!r}")
        self.shown_url = shown_url
        self.patience_s = patience_s
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic time of the first failure
        self._gave_up = False

    def _give_up_error(self) -> StorageUnavailable:
        return StorageUnavailable(
            f"the Optuna storage {self.shown_url} has been unreachable for more than "
            f"{self.patience_s:g} s (--storage-patience): once the database is back, rerun the "
            "same command to resume")

    def call(self, fn: Callable[[], T], check: Callable[[], tuple[bool, Any]] | None = None) -> T:
        """``fn()``, retried while it fails for a lost connection, until the outage has
        lasted ``patience_s``. ``check()`` runs before each retry: (True, value) when the
        failed attempt took effect after all, and ``value`` is its result."""
        delay = _FIRST_DELAY_S
        failed = False
        while True:
            if self._gave_up:
                raise self._give_up_error()
            try:
                if failed and check is not None:
                    done, value = check()
                    if done:
                        self._recovered()
                        return value
                value = fn()
            except Exception as e:
                if not is_connection_error(e):
                    if failed:  # the server answered: whatever this is, the outage is over
                        self._recovered()
                    raise
                failed = True
                if self._failed(e):
                    raise self._give_up_error() from None
                time.sleep(delay)
                delay = min(2 * delay, _MAX_DELAY_S)
                continue
            if failed:
                self._recovered()
            return value

    def _failed(self, e: BaseException) -> bool:
        """Note a failure; True once the outage has outlasted the patience."""
        with self._lock:
            now = time.monotonic()
            if self._since is None:
                self._since = now
                logger.warning("storage %s: the database connection is lost (%s); waiting up "
                               "to %g s for it (--storage-patience)", self.shown_url,
                               type(e).__name__, self.patience_s)
            if now - self._since > self.patience_s:
                self._gave_up = True
            return self._gave_up

    def _recovered(self) -> None:
        with self._lock:
            if self._since is not None:
                logger.warning("storage %s: the database is back after %.0f s",
                               self.shown_url, time.monotonic() - self._since)
                self._since = None

    def connect(self, dialect: Any, cparams: dict, cargs: tuple) -> Any:
        """A new DBAPI connection, waiting for the server while it refuses."""
        return self.call(lambda: dialect.connect(*cargs, **cparams))


class PatientRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose calls ride out an outage of up to ``outage.patience_s``."""

    def __init__(self, url: str, outage: Outage, **kwargs: Any):
        self.outage = outage
        super().__init__(url, **kwargs)

        @event.listens_for(self.engine, "do_connect")
        def _connect(dialect, conn_rec, cargs, cparams):
            return outage.connect(dialect, cparams, cargs)

    # -- writes that may have committed before the connection dropped: check, then retry.
    # (Creating a trial is not here: Optuna's study cache creates trials through a method
    # of the storage that is not public.)

    def create_new_study(self, directions, study_name=None):  # type: ignore[no-untyped-def]
        def check() -> tuple[bool, Any]:
            if study_name is None:
                return False, None
            try:
                return True, super(PatientRDBStorage, self).get_study_id_from_name(study_name)
            except KeyError:
                return False, None
        return self.outage.call(lambda: super(PatientRDBStorage, self).create_new_study(
            directions, study_name), check)

    def set_trial_state_values(self, trial_id, state, values=None):  # type: ignore[no-untyped-def]
        base = super()

        def check() -> tuple[bool, Any]:
            trial = base.get_trial(trial_id)
            if state == TrialState.RUNNING and trial.state == TrialState.RUNNING:
                # A WAITING trial popped: this worker's write or another's, no telling which;
                # "not updated" makes Optuna take another one rather than share it.
                return True, False
            if trial.state == state and (values is None or list(trial.values or []) == list(values)):
                return True, True
            return False, None
        return self.outage.call(lambda: base.set_trial_state_values(trial_id, state, values),
                                check)

    def delete_study(self, study_id):  # type: ignore[no-untyped-def]
        base = super()

        def check() -> tuple[bool, Any]:
            try:
                base.get_study_name_from_id(study_id)
            except KeyError:
                return True, None
            return False, None
        return self.outage.call(lambda: base.delete_study(study_id), check)


def wait_until_answers(url: str, patience_s: float) -> bool:
    """Whether the database at ``url`` answers a ``SELECT 1`` within ``patience_s`` seconds
    (tried at once, then with the same backoff as ``Outage.call``), on a connection of its
    own: the caller's engine may hold connections that died with the server."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    started, delay = time.monotonic(), _FIRST_DELAY_S
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return True
            except exc.SQLAlchemyError as e:
                if not is_connection_error(e) and not isinstance(e, exc.OperationalError):
                    raise
            if time.monotonic() - started + delay > patience_s:
                return False
            time.sleep(delay)
            delay = min(2 * delay, _MAX_DELAY_S)
    finally:
        engine.dispose()


def _patient(name: str) -> Callable[..., Any]:
    def method(self: PatientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self.outage.call(lambda: getattr(RDBStorage, name)(self, *args, **kwargs))
    method.__name__ = name
    method.__doc__ = f"``RDBStorage.{name}``, retried while the connection is lost."
    return method


# Reads and idempotent writes (setting an attr, a param or an intermediate value again
# writes the same row): retried as they are.
for _name in ("get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
              "get_study_user_attrs", "get_study_system_attrs", "get_all_studies",
              "set_study_user_attr", "set_study_system_attr", "get_trial",
              "get_all_trials", "get_n_trials", "get_trial_id_from_study_id_trial_number",
              "get_trial_number_from_id", "get_trial_param", "get_trial_params",
              "get_trial_user_attrs", "get_trial_system_attrs", "set_trial_param",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "record_heartbeat", "get_best_trial"):
    if hasattr(RDBStorage, _name):
        setattr(PatientRDBStorage, _name, _patient(_name))


__all__ = ["DEFAULT_PATIENCE_S", "Outage", "PatientRDBStorage", "StorageUnavailable",
           "is_connection_error", "wait_until_answers"]
