"""SIGKILL run_study.py in phases 1, 2, 3 and 4, rerun it, and compare everything with an
unbroken run: the LR choice, every reported value, the crossover trials, the final model."""

from __future__ import annotations

import optuna
import pytest
from _runs import STUDY, finish, outcome, run_until
from optuna.trial import TrialState


@pytest.mark.slow
def test_sigkill_in_every_phase_then_rerun_equals_an_unbroken_run(tmp_path, unbroken_smoke):
    crashed = tmp_path / "crashed"
    run_until(crashed, "LR 0.01 epoch 1/2")          # second grid point, mid trial
    run_until(crashed, "long run epoch 3/6")          # phase 2, after epoch 3 is reported
    storage = f"sqlite:///{crashed}/{STUDY}.db"
    states = [t.state for t in optuna.load_study(study_name=f"{STUDY}-long-run",
                                                 storage=storage).trials]
    assert states == [TrialState.RUNNING]  # left running by the killed process
    run_until(crashed, "phase 3 done in")  # phase 3 done, phase 4 not started
    run_until(crashed, "crossover trial 1:")          # phase 4, a queued trial evaluated, not told
    states = [t.state for t in optuna.load_study(study_name=f"{STUDY}-crossover",
                                                 storage=storage).trials]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]
    finish(crashed)

    expected, got = unbroken_smoke["outcome"], outcome(crashed)
    assert got == expected
    assert len(expected["sweep"]) == 5 and expected["checkpoints"] == ["epoch_002", "epoch_004"]
    sweep = optuna.load_study(study_name=f"{STUDY}-lr-sweep", storage=storage)
    assert [t.state for t in sweep.trials].count(TrialState.FAIL) == 1  # the killed trial
    crossover = optuna.load_study(study_name=f"{STUDY}-crossover", storage=storage)
    assert [t.state for t in crossover.trials].count(TrialState.FAIL) == 1
    # The killed long run is failed; a new trial continued it and inherited its epochs.
    long_run = optuna.load_study(study_name=f"{STUDY}-long-run", storage=storage).trials
    assert [t.state for t in long_run] == [TrialState.FAIL, TrialState.COMPLETE]
    assert long_run[1].user_attrs["continues_trial"] == 0
    assert sorted(long_run[1].intermediate_values) == [1, 2, 3, 4]
