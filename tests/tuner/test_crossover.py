from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from model import build_model
from storage import Session
from storage.checkpoints import CheckpointError, save_checkpoint
from tuner.context import RunContext
from tuner.crossover import (
    ResumableTPESampler,
    assemble_state,
    load_crossover,
    recipe_params,
    run_crossover_study,
)


def _saved(tmp_path):
    """Two checkpoints of the tiny model with different weights (epochs 2 and 4)."""
    torch.manual_seed(0)
    model = build_model("tiny")
    spec = model.group_spec
    save_checkpoint(tmp_path, 2, model, spec, {})
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path, 4, model, spec, {})
    return spec, first, model.state_dict()


def test_one_epoch_for_every_group_is_exactly_that_checkpoint(tmp_path):
    spec, _, second = _saved(tmp_path)
    state = assemble_state(tmp_path, {g: 4 for g in spec.groups}, spec)
    assert all(torch.equal(state[k], second[k]) for k in second)


def test_a_mixed_recipe_takes_each_group_from_its_own_epoch(tmp_path):
    spec, first, second = _saved(tmp_path)
    recipe = {g: (2 if g == "group_b_neural" else 4) for g in spec.groups}
    torch.manual_seed(1)
    model = load_crossover(build_model("tiny"), tmp_path, recipe, spec)
    state = model.state_dict()
    for k in state:
        expected = first if k.startswith("neural.") else second
        assert torch.equal(state[k], expected[k]), k


def test_an_incomplete_recipe_and_a_damaged_file_are_refused(tmp_path):
    spec, _, _ = _saved(tmp_path)
    with pytest.raises(ValueError, match="no epoch for groups"):
        assemble_state(tmp_path, {"group_b_neural": 2}, spec)
    f = tmp_path / "epoch_002" / "group_c_dsp_kalman.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="group_c_dsp_kalman"):
        assemble_state(tmp_path, {g: 2 for g in spec.groups}, spec)


# ----------------------------------------------------------------------------- the study

def _toy(fail_at: int | None = None):
    def objective(trial):
        a = trial.suggest_categorical("a", [2, 4, 6, 8])
        b = trial.suggest_categorical("b", [2, 4, 6, 8])
        if trial.number == fail_at:
            raise RuntimeError("killed mid-trial")
        return (a - 4) ** 2 + (b - 6) ** 2 + 0.1 * a
    return objective


def _completed(study):
    return [(t.params, t.value) for t in study.trials if t.state == TrialState.COMPLETE]


def test_a_restarted_search_proposes_what_an_unbroken_one_does(tmp_path):
    sampler_cls = ResumableTPESampler
    storage = f"sqlite:///{tmp_path}/s.db"
    unbroken = optuna.create_study(study_name="u", storage=storage, sampler=sampler_cls(7))
    unbroken.optimize(_toy(), n_trials=14)

    broken = optuna.create_study(study_name="b", storage=storage, sampler=sampler_cls(7))
    broken.optimize(_toy(fail_at=3), n_trials=4, catch=(RuntimeError,))  # trial 3 dies
    resumed = optuna.load_study(study_name="b", storage=storage, sampler=sampler_cls(7))  # new process
    resumed.optimize(_toy(), n_trials=14 - len(_completed(resumed)))
    assert _completed(resumed) == _completed(unbroken)


def test_optunas_own_seeded_tpe_does_not_survive_a_restart(tmp_path):
    """Why ResumableTPESampler exists: the same scenario with TPESampler(seed) diverges."""
    storage = f"sqlite:///{tmp_path}/s.db"
    unbroken = optuna.create_study(study_name="u", storage=storage,
                                   sampler=optuna.samplers.TPESampler(seed=7))
    unbroken.optimize(_toy(), n_trials=14)
    broken = optuna.create_study(study_name="b", storage=storage,
                                 sampler=optuna.samplers.TPESampler(seed=7))
    broken.optimize(_toy(fail_at=3), n_trials=4, catch=(RuntimeError,))
    resumed = optuna.load_study(study_name="b", storage=storage,
                                sampler=optuna.samplers.TPESampler(seed=7))
    resumed.optimize(_toy(), n_trials=14 - len(_completed(resumed)))
    assert _completed(resumed) != _completed(unbroken)


def test_a_queued_recipe_whose_trial_failed_is_queued_again_and_nothing_runs_twice(
        tmp_path, embedded_small):
    ds, data = embedded_small
    session = Session.create(tmp_path, "s")
    spec, _, _ = _saved(session.path("checkpoints"))
    study = optuna.create_study(study_name="x", storage=f"sqlite:///{tmp_path}/s.db",
                                sampler=ResumableTPESampler(0))
    sweet = {g: 2 for g in spec.groups}
    queued = recipe_params(sweet, [2, 4])  # one epoch per group: a window of 1
    study.enqueue_trial(queued)
    dead = study.ask()                                 # the recipe's trial, then a crash
    study.tell(dead, state=TrialState.FAIL)
    model = build_model("tiny", ds.tasks)
    ctx = RunContext(tasks=ds.tasks, build=lambda: (model, spec), train=data, val=data,
                     session=session, progress=False)
    run_crossover_study(study, ctx, spec, [2, 4], [sweet], model, 3)
    done = [t.params for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and done[0] == queued
    run_crossover_study(study, ctx, spec, [2, 4], [sweet], model, 3)
    assert len(study.trials) == 4                      # the rerun found it all done
