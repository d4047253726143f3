"""Concurrency: a real optuna-dashboard polling the storage through a whole run, and two
run_study.py workers sharing one storage (SQLite and the journal file)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import optuna
import pytest
from _runs import ROOT, STUDY, command, finish
from optuna.trial import TrialState

from storage.studies import create_storage
from tuner.lr_sweep import PRESET_GRIDS, trial_lr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


def _wait_for_api(api: str) -> list[dict]:
    """optuna-dashboard's study summaries, once its API answers."""
    for _ in range(120):
        try:
            return _get(f"{api}/studies")["study_summaries"]
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"optuna-dashboard did not answer on {api}")


def _dashboard_executable() -> str:
    return shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")


@pytest.mark.slow
def test_optuna_dashboard_polls_sqlite_through_a_whole_smoke_run(tmp_path):
    backup = tmp_path / "b"
    url = f"sqlite:///{backup}/{STUDY}.db"
    create_storage(url)  # the file exists (in WAL mode) before the dashboard opens it
    port = _free_port()
    dash = subprocess.Popen([_dashboard_executable(), url, "--host", "127.0.0.1", "--port", str(port),
                             "--artifact-dir", str(backup / STUDY / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        _wait_for_api(api)
        polls, errors, stop = Counter(), [], threading.Event()

        def poll() -> None:
            while not stop.is_set():
                try:
                    for s in _get(f"{api}/studies")["study_summaries"]:
                        _get(f"{api}/studies/{s['study_id']}?after=0")
                        polls[s["study_name"]] += 1
                except Exception as e:  # every failure is recorded and fails the test below
                    errors.append(repr(e))
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        run = finish(backup)
        stop.set()
        poller.join(timeout=60)
        assert errors == []
        assert set(polls) == {f"{STUDY}-lr-sweep", f"{STUDY}-long-run", f"{STUDY}-crossover"}
        assert polls[f"{STUDY}-lr-sweep"] > 20  # it polled all along, not just at the end
        assert "database is locked" not in run.stderr
        # When the run ends the API shows every trial the storage holds.
        for s in _get(f"{api}/studies")["study_summaries"]:
            shown = _get(f"{api}/studies/{s['study_id']}?after=0")["trials"]
            stored = optuna.load_study(study_name=s["study_name"], storage=url).trials
            assert [t["number"] for t in shown] == [t.number for t in stored]
            assert [t["state"] for t in shown] == [t.state.name.capitalize() for t in stored]
    finally:
        dash.terminate()
        _, dash_err = dash.communicate(timeout=30)
    assert "database is locked" not in dash_err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_two_workers_share_the_grid_and_one_of_them_runs_the_rest(tmp_path, backend):
    backup = tmp_path / "b"
    url = (f"sqlite:///{backup}/{STUDY}.db" if backend == "sqlite"
           else f"journal:///{backup}/{STUDY}.log")
    workers = [subprocess.Popen(command(backup, "--storage", url), cwd=ROOT, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    logs = [w.communicate(timeout=600)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-2000:] for log in logs)

    storage = create_storage(url)
    sweep = optuna.load_study(study_name=f"{STUDY}-lr-sweep", storage=storage)
    ended = [t for t in sweep.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # A worker that asks for a trial just after the other claimed the last free point
    # finds nothing to run: that trial ends PRUNED with no LR and says why.
    claimed = [t for t in ended if trial_lr(t) is not None]
    assert all("unused" in t.user_attrs for t in ended if trial_lr(t) is None)
    finished = Counter(trial_lr(t) for t in claimed)
    # Each point once (an edge extension, if any, adds points beyond the grid, once each too).
    assert set(PRESET_GRIDS["ngram"]) <= set(finished) and set(finished.values()) == {1}
    # Points are claimed before they start: no trial ends FAILED as a duplicate.
    assert [t.number for t in sweep.trials if t.state == TrialState.FAIL] == []
    ran_by = {t.user_attrs["worker"] for t in claimed}
    long_run = optuna.load_study(study_name=f"{STUDY}-long-run", storage=storage)
    assert [t.state for t in long_run.trials].count(TrialState.COMPLETE) == 1
    crossover = optuna.load_study(study_name=f"{STUDY}-crossover", storage=storage)
    done = [t for t in crossover.trials if t.state == TrialState.COMPLETE]
    queued = Counter(tuple(sorted(t.params.items())) for t in done if "queued_recipe" in t.user_attrs)
    # --crossover-trials 4 (smoke) after the distinct queued recipes (sweet spots, best single, soup).
    assert all(n == 1 for n in queued.values()) and len(done) == 4 + len(queued)
    # Exactly one worker ran phases 2-4; the other said why it stopped, and exited 0.
    assert sum("phase 4 done" in log for log in logs) == 1
    other = next(log for log in logs if "phase 4 done" not in log)
    assert "this one is done" in other
    assert (backup / STUDY / "final_results.json").is_file()
    print(f"{backend}: grid points run by {len(ran_by)} worker(s)")


@pytest.mark.slow
def test_a_waiting_worker_takes_over_the_long_run_of_a_worker_that_dies(tmp_path, unbroken_smoke):
    from _runs import outcome

    backup = tmp_path / "b"
    owner = subprocess.Popen(command(backup), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in owner.stderr:
        if "long run epoch 1/6" in line:
            break
    os.kill(owner.pid, signal.SIGSTOP)  # alive but still: the long run stays its own
    idle = subprocess.Popen(command(backup), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in idle.stderr:
        seen.append(line)
        if "the long run runs in another live worker: waiting" in line:
            break
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=60)
    err = "".join(seen) + idle.communicate(timeout=600)[1]
    assert idle.returncode == 0, err[-3000:]
    assert "was left running by a process that is gone" in err
    assert "phase 4 done" in err
    assert outcome(backup) == unbroken_smoke["outcome"]
