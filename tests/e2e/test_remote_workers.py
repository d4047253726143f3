"""Workers on different hosts, told apart by REDHEART_WORKER_HOST, so no pid check applies:
a dead one is noticed by its heartbeats (Optuna's on PostgreSQL) within the grace period,
and a live one in an epoch longer than the grace period is never taken for dead."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from _runs import ROOT, STUDY, command
from optuna.trial import TrialState
from test_postgres_workers import SAME

from storage.studies import create_storage
from tuner._workers import HOST_ENV, POLL_S

INTERVAL_S, GRACE_S = 1, 3
BEAT = ["--heartbeat-interval", str(INTERVAL_S), "--grace-period", str(GRACE_S)]


def _start(backup: Path, host: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(backup, *BEAT, *extra), cwd=ROOT, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, HOST_ENV: host, **(env or {})})


class _Logs:
    """Every worker's stderr, read line by line in threads (so none blocks on a full pipe)."""

    def __init__(self, workers: dict[str, subprocess.Popen]) -> None:
        self.lines: dict[str, list[str]] = {name: [] for name in workers}
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._threads = {name: threading.Thread(target=self._read, args=(name, proc), daemon=True)
                         for name, proc in workers.items()}
        for thread in self._threads.values():
            thread.start()

    def _read(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines[name].append(line)
            self._queue.put((name, line))

    def first(self, marker: str, timeout: float = 600) -> str:
        """The worker whose log shows ``marker`` first."""
        end = time.monotonic() + timeout
        while True:
            name, line = self._queue.get(timeout=max(0.1, end - time.monotonic()))
            if marker in line:
                return name

    def text(self, name: str) -> str:
        """The whole log of a worker that has exited (its reader reaches the pipe's end)."""
        self._threads[name].join(timeout=60)
        return "".join(self.lines[name])


def _kill_first(study: str, backup: Path, url: str, marker: str) -> tuple[str, float, str, dict]:
    """Start two workers on "hosts" a and b; SIGKILL the first whose log shows ``marker``;
    let the other finish. Returns (victim, kill time, survivor's log, final results)."""
    workers = {h: _start(backup / h, f"host-{h}", "--storage", url, "--study", study)
               for h in ("a", "b")}
    logs = _Logs(workers)
    victim = logs.first(marker)
    os.kill(workers[victim].pid, signal.SIGKILL)
    killed_at = time.time()
    survivor = "b" if victim == "a" else "a"
    assert workers[survivor].wait(timeout=900) == 0, logs.text(survivor)[-3000:]
    workers[victim].wait(timeout=60)
    results = json.loads((backup / survivor / study / "final_results.json").read_text())
    return victim, killed_at, logs.text(survivor), results


def _takeover_s(study: optuna.Study, killed_at: float, victim: str, match) -> tuple[float, int]:
    """Seconds from the kill to the start of the trial that took the victim's work over."""
    dead = [t for t in study.trials if t.state == TrialState.FAIL
            and t.user_attrs.get("worker", "").startswith(f"host-{victim}:")]
    assert len(dead) == 1, [(t.number, t.state, t.user_attrs.get("worker")) for t in study.trials]
    later = [t for t in study.trials if t.number > dead[0].number
             and t.state in (TrialState.COMPLETE, TrialState.PRUNED) and match(t, dead[0])]
    assert len(later) == 1
    return later[0].datetime_start.timestamp() - killed_at, dead[0].number


def _assert_in_time(took: float) -> None:
    # Optuna fails the trial once its last heartbeat (at most one interval before the kill)
    # is older than the grace period; the survivor looks every POLL_S or between trials.
    assert GRACE_S - INTERVAL_S - 0.5 <= took <= GRACE_S + INTERVAL_S + POLL_S + 10, took


@pytest.mark.slow
def test_a_remote_worker_killed_mid_grid_point_is_taken_over_within_the_grace_period(
        tmp_path, postgres_url, unbroken_smoke):
    study = f"pg{uuid.uuid4().hex[:10]}"
    victim, killed_at, log, results = _kill_first(study, tmp_path, postgres_url, "epoch 1/2:")
    storage = create_storage(postgres_url)
    sweep = optuna.load_study(study_name=f"{study}-lr-sweep", storage=storage)
    took, dead = _takeover_s(sweep, killed_at, victim, lambda t, d: t.params == d.params)
    print(f"grid point of trial {dead} (killed on host-{victim}) retried {took:.1f} s after the "
          f"kill (heartbeat {INTERVAL_S} s, grace {GRACE_S} s)")
    _assert_in_time(took)
    assert "Optuna marked it failed" in log
    finished = Counter(t.params["lr"] for t in sweep.trials
                       if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params)
    assert set(finished.values()) == {1}  # nothing completed twice
    want = json.loads((unbroken_smoke["backup"] / STUDY / "final_results.json").read_text())
    assert {k: results[k] for k in SAME} == {k: want[k] for k in SAME}


@pytest.mark.slow
def test_a_remote_worker_killed_mid_long_run_is_taken_over_within_the_grace_period(
        tmp_path, postgres_url, unbroken_smoke):
    study = f"pg{uuid.uuid4().hex[:10]}"
    victim, killed_at, log, results = _kill_first(study, tmp_path, postgres_url,
                                                  "long run epoch 2/6")
    storage = create_storage(postgres_url)
    long_run = optuna.load_study(study_name=f"{study}-long-run", storage=storage)
    took, dead = _takeover_s(long_run, killed_at, victim,
                             lambda t, d: t.user_attrs.get("continues_trial") == d.number)
    print(f"long run (trial {dead}, killed on host-{victim}) continued {took:.1f} s after the kill")
    _assert_in_time(took)
    assert "Optuna marked it failed" in log
    assert [t.state for t in long_run.trials].count(TrialState.COMPLETE) == 1
    # The survivor has its own session folder: the victim's resume state is not on its
    # "host", so it trains the long run from epoch 1, with the same result.
    want = json.loads((unbroken_smoke["backup"] / STUDY / "final_results.json").read_text())
    assert {k: results[k] for k in SAME} == {k: want[k] for k in SAME}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres", "journal"])
def test_a_live_worker_in_an_epoch_longer_than_the_grace_period_is_not_taken_for_dead(
        tmp_path, backend, request):
    url = (request.getfixturevalue("postgres_url") if backend == "postgres"
           else f"journal:///{tmp_path}/shared.log")
    study = f"s{uuid.uuid4().hex[:10]}"
    # The first long-run epoch of whoever runs it takes 4 x the grace period to report.
    stall = {"REDHEART_STALL_AT": f"long:epoch=1#1={4 * GRACE_S}"}
    workers = {h: _start(tmp_path / h, f"host-{h}", "--storage", url, "--study", study, env=stall)
               for h in ("a", "b")}
    logs = _Logs(workers)
    codes = {h: w.wait(timeout=900) for h, w in workers.items()}
    assert codes == {"a": 0, "b": 0}, {h: logs.text(h)[-2000:] for h in workers}
    storage = create_storage(url)
    long_run = optuna.load_study(study_name=f"{study}-long-run", storage=storage)
    states = [t.state for t in long_run.trials]
    assert states.count(TrialState.COMPLETE) == 1 and TrialState.FAIL not in states, states
    assert not any("marked it failed" in logs.text(h) or "process that is gone" in logs.text(h)
                   for h in workers)
    assert sum("phase 4 done" in logs.text(h) for h in workers) == 1
