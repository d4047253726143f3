"""Same-host liveness of a worker, from psutil's process start time (any OS)."""

from __future__ import annotations

import socket
import subprocess
import sys

import psutil

from tuner import _workers
from tuner._workers import is_gone, worker_id


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
