"""Three run_study.py workers on one real PostgreSQL server (skipped loudly without one,
failed under CI): each grid point once, nothing red, the single-worker result."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter

import optuna
import pytest
from _runs import ROOT, STUDY, command
from optuna.trial import TrialState
from test_concurrency import _dashboard_executable, _free_port, _get, _wait_for_api

from storage.studies import create_storage
from tuner.lr_sweep import PRESET_GRIDS

# What must equal the single-worker run (the rest names trials, workers or times).
SAME = ("best_lr", "sweet_spots", "overfitting_point", "crossover_recipe",
        "crossover_best_value", "test_table", "data_stats")


@pytest.mark.slow
def test_three_workers_on_postgresql_run_each_point_once_and_equal_one_worker(
        tmp_path, postgres_url, unbroken_smoke):
    study = f"pg{uuid.uuid4().hex[:10]}"  # the server outlives the test
    backup = tmp_path / "b"
    workers = [subprocess.Popen(command(backup, "--storage", postgres_url, "--study", study),
                                cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    logs = [w.communicate(timeout=900)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], "\n".join(log[-2000:] for log in logs)

    storage = create_storage(postgres_url)
    sweep = optuna.load_study(study_name=f"{study}-lr-sweep", storage=storage)
    finished = Counter(t.params["lr"] for t in sweep.trials
                       if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params)
    assert set(finished) >= set(PRESET_GRIDS["ngram"]) and set(finished.values()) == {1}
    assert [t.number for t in sweep.trials if t.state == TrialState.FAIL] == []
    long_run = optuna.load_study(study_name=f"{study}-long-run", storage=storage)
    assert [t.state for t in long_run.trials].count(TrialState.COMPLETE) == 1
    assert sum("phase 4 done" in log for log in logs) == 1

    got = json.loads((backup / study / "final_results.json").read_text())
    want = json.loads((unbroken_smoke["backup"] / STUDY / "final_results.json").read_text())
    assert {k: got[k] for k in SAME} == {k: want[k] for k in SAME}

    # Nothing red where a person looks: optuna-dashboard's own API on the same server.
    port = _free_port()
    dash = subprocess.Popen([_dashboard_executable(), postgres_url, "--host", "127.0.0.1",
                             "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        api = f"http://127.0.0.1:{port}/api"
        ids = {s["study_name"]: s["study_id"] for s in _wait_for_api(api)}
        shown = _get(f"{api}/studies/{ids[f'{study}-lr-sweep']}?after=0")["trials"]
        states = Counter(t["state"] for t in shown)
        points = Counter(t["state"] for t in shown if t["params"])
        print(f"optuna-dashboard, {study}-lr-sweep: trials by state {dict(states)}; "
              f"grid points by state {dict(points)}")
        assert states["Fail"] == 0 and states["Complete"] + states["Pruned"] >= 5, states
    finally:
        dash.terminate()
        dash.communicate(timeout=30)
