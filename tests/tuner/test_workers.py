"""Liveness of a worker: on this host from psutil's process start time (any OS), on
another from heartbeats (ours, or Optuna's on an RDB storage)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from storage.studies import create_storage
from tuner import _workers
from tuner._workers import (
    INCARNATION_ENV,
    Heartbeat,
    beating,
    fail_stale_by_storage,
    incarnation,
    is_gone,
    storage_heartbeats,
    worker_id,
)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _id_of(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{psutil.Process(pid).create_time():.2f}"


def test_a_live_worker_is_not_gone_and_a_killed_one_is():
    proc = _sleeper()
    worker = _id_of(proc.pid)
    assert not is_gone(worker, None, 3600.0)
    proc.kill()
    proc.wait()
    assert is_gone(worker, None, 3600.0)


def test_a_reused_pid_with_another_start_time_is_gone():
    proc = _sleeper()
    try:
        host, pid, _ = _id_of(proc.pid).split(":")
        assert is_gone(f"{host}:{pid}:12.00", None, 3600.0)
    finally:
        proc.kill()
        proc.wait()


def test_this_process_is_never_gone():
    assert not is_gone(worker_id(), None, 0.0)


def test_an_earlier_incarnation_of_this_process_is_gone_and_this_one_is_not(monkeypatch):
    """After run_study.py re-executes itself (same pid and start time), the trials and
    claims of the process it was count as gone at once; a later incarnation's never do."""
    monkeypatch.delenv(INCARNATION_ENV, raising=False)
    first = worker_id()
    assert "/" not in first and incarnation() == 0
    monkeypatch.setenv(INCARNATION_ENV, "2")
    assert incarnation() == 2
    now = worker_id()
    assert now == f"{first}/2"
    assert not is_gone(now, None, 3600.0)
    assert is_gone(first, None, 3600.0) and is_gone(f"{first}/1", None, 3600.0)
    proc = _sleeper()  # another live process's incarnation is judged by its pid, as before
    try:
        assert not is_gone(_id_of(proc.pid) + "/1", None, 3600.0)
    finally:
        proc.kill()
        proc.wait()
    monkeypatch.setenv(INCARNATION_ENV, "x")
    assert incarnation() == 0


def test_waiting_for_a_database_that_does_not_answer_gives_up_within_the_patience(tmp_path):
    from storage.outage import wait_until_answers

    assert wait_until_answers(f"sqlite:///{tmp_path / 'ok.db'}", 1.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    started = time.monotonic()
    assert not wait_until_answers(f"postgresql+psycopg://u:p@127.0.0.1:{port}/db", 2.0)
    assert time.monotonic() - started < 10


def test_when_the_os_hides_start_times_a_live_pid_still_counts_as_alive(monkeypatch):
    """The fallback path: psutil may see a process but be denied its start time (other
    users' processes on macOS and Windows)."""
    proc = _sleeper()
    try:
        worker = _id_of(proc.pid)

        class Denied:
            def __init__(self, pid: int) -> None:
                if not psutil.pid_exists(pid):
                    raise psutil.NoSuchProcess(pid)

            def create_time(self) -> float:
                raise psutil.AccessDenied()

        monkeypatch.setattr(_workers.psutil, "Process", Denied)
        assert _workers._start_time(proc.pid) == ""
        assert not is_gone(worker, None, 3600.0)
    finally:
        proc.kill()
        proc.wait()
    assert is_gone(worker, None, 3600.0)


def test_another_hosts_worker_is_judged_by_its_last_sign_of_life_or_by_optuna(monkeypatch):
    remote = "elsewhere:123:45.00"
    assert not is_gone(remote, time.time() - 5, 10)
    assert is_gone(remote, time.time() - 11, 10)
    assert is_gone(None, None, 10)  # no worker, no sign of life: nothing will finish it
    # Where the storage records Optuna's heartbeats, Optuna fails the trial, not us.
    assert not is_gone(remote, time.time() - 11, 10, by_storage=True)
    monkeypatch.setenv(_workers.HOST_ENV, "elsewhere")  # now that host is this one: pid check
    assert is_gone(remote, time.time(), 10, by_storage=True)


def test_a_heartbeat_needs_a_grace_period_longer_than_its_interval():
    assert Heartbeat(5).grace_s == 15
    assert Heartbeat(5, 6).grace_s == 6
    with pytest.raises(ValueError, match="got 0"):
        Heartbeat(0)
    with pytest.raises(ValueError, match="got 5"):
        Heartbeat(5, 5)


def test_beating_calls_now_and_every_interval_until_the_block_ends_and_survives_errors():
    calls = []

    def beat():
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise OSError("storage briefly unreachable")

    with beating(beat, 0.05, "test"):
        time.sleep(0.32)
    n = len(calls)
    time.sleep(0.15)
    assert n >= 4 and len(calls) == n  # kept beating past the error, and stopped after


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")  # ask/tell on purpose
def test_optuna_fails_a_trial_whose_heartbeat_stopped_on_a_real_sqlite_storage(tmp_path):
    storage = create_storage(f"sqlite:///{tmp_path}/h.db", heartbeat_interval=1, grace_period=1)
    hb = Heartbeat(1, 2, by_storage=storage_heartbeats(storage))
    assert hb.by_storage and not storage_heartbeats(create_storage(f"sqlite:///{tmp_path}/n.db"))
    study = optuna.create_study(study_name="s", storage=storage)
    beating_trial, silent_trial = study.ask(), study.ask()
    ids = [storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("s"), t.number) for t in (beating_trial, silent_trial)]
    for trial_id in ids:
        storage.record_heartbeat(trial_id)
    with beating(lambda: storage.record_heartbeat(ids[0]), 0.3, "test"):
        time.sleep(2.5)  # the silent one's last heartbeat is now past the 1 s grace period
        assert fail_stale_by_storage(study, hb) == [silent_trial.number]
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL]
    assert fail_stale_by_storage(study, Heartbeat(1)) == []  # a storage without heartbeats
