"""Who runs a trial, and whether that process is gone (for resuming after a kill)."""

from __future__ import annotations

import os
import socket
import time

import psutil

WORKER_ATTR = "worker"
HEARTBEAT_ATTR = "heartbeat"
# A RUNNING trial whose worker shows no sign of life this long is taken over (sweep, long
# run, crossover alike): on another host, no heartbeat; on this one, a dead pid at once.
STALE_AFTER_S = 3600.0
POLL_S = 2.0  # how often a worker waiting on another one looks at the storage


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (guards against pid reuse), from psutil on every OS;
    None when it does not exist; "" when it exists but the OS will not say when it started."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # AccessDenied and the like: alive, start unknown
        return ""


def trial_is_gone(t, stale_after_s: float) -> bool:
    """``is_gone`` for a (frozen) RUNNING trial."""
    started = t.datetime_start.timestamp() if t.datetime_start is not None else None
    return is_gone(t.user_attrs.get(WORKER_ATTR), t.user_attrs.get(HEARTBEAT_ATTR), stale_after_s,
                   started)


def worker_id() -> str:
    """host:pid:start-time of this process."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def is_gone(worker: str | None, heartbeat: float | None, stale_after_s: float,
            started: float | None = None) -> bool:
    """True when the worker that owns a RUNNING trial can no longer finish it.

    On this host: its process is dead (or the pid was reused). On another host: its
    last heartbeat is older than ``stale_after_s``. A trial that has no worker yet (just
    taken by a live process) is gone only when it started ``stale_after_s`` ago.
    """
    if not worker:
        last = heartbeat if heartbeat is not None else started
        return last is None or time.time() - last > stale_after_s
    host, _, rest = worker.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname():
        return heartbeat is not None and time.time() - heartbeat > stale_after_s
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid == os.getpid():
        return False
    current = _start_time(pid)
    if current is None:
        return True
    # Without both start times (the OS would not say) a live pid counts as the worker.
    return current != "" and started not in ("", "None") and current != started
