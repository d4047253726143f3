"""A session recorded by an earlier version (tests/fixtures/session_a2b1d51: a2b1d51, killed
in phase 4 with two crossover trials scored on the whole val) resumes with the current code:
no settings refusal, no retraining, and its old crossover trials are kept apart, never
mixed with trials scored on the search rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import optuna
import pytest
from _runs import ROOT
from optuna.trial import TrialState

FIXTURE = ROOT / "tests" / "fixtures" / "session_a2b1d51"
COMMAND = ["--smoke", "--no-progress", "--study", "old", "--seed", "5", "--epochs", "4",
           "--preset", "tiny"]


def _run(backup) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_study.py"), *COMMAND,
                           "--backup-dir", str(backup)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_a_session_recorded_by_a2b1d51_resumes_in_phase_4_without_mixing_crossover_trials(
        tmp_path):
    backup = tmp_path / "runs"
    shutil.copytree(FIXTURE, backup)
    storage = f"sqlite:///{backup}/old.db"
    before = optuna.load_study(study_name="old-crossover", storage=storage)
    old_values = [t.value for t in before.trials if t.state == TrialState.COMPLETE]
    assert len(old_values) == 2 and "scored_on" not in before.user_attrs

    out = _run(backup)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "kept as old-crossover-whole-val" in out.stderr
    long_run = optuna.load_study(study_name="old-long-run", storage=storage).trials
    assert [t.state for t in long_run] == [TrialState.COMPLETE]  # nothing retrained
    kept = optuna.load_study(study_name="old-crossover-whole-val", storage=storage)
    assert [t.value for t in kept.trials if t.state == TrialState.COMPLETE] == old_values
    new = optuna.load_study(study_name="old-crossover", storage=storage)
    assert new.user_attrs["scored_on"]["rows"] == "search"
    assert all(t.value not in old_values for t in new.trials if t.state == TrialState.COMPLETE)
    results = json.loads((backup / "old" / "final_results.json").read_text())
    split = results["final_choice"]["val_split"]
    assert new.user_attrs["scored_on"]["n"] == split["search_rows"]
    assert results["crossover_recipe"]["method"] == results["final_choice"]["final"]

    again = _run(backup)  # a finished session: the rerun changes nothing
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((backup / "old" / "final_results.json").read_text()) == results
