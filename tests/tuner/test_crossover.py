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
    best_recipe,
    best_single_epoch,
    load_crossover,
    params_recipe,
    recipe_params,
    run_crossover_study,
)
from tuner.monitor import Monitor


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


# --------------------------------------------------------------------------- windows

def test_a_window_averages_the_groups_weights_over_its_checkpoints(tmp_path):
    spec, first, second = _saved(tmp_path)
    recipe = {g: ([2, 4] if g == "group_b_neural" else 4) for g in spec.groups}
    state = assemble_state(tmp_path, recipe, spec)
    for k in second:
        if k.startswith("neural.") and first[k].is_floating_point():
            assert torch.allclose(state[k], (first[k] + second[k]) / 2), k
        else:
            assert torch.equal(state[k], second[k]), k


def test_recipes_and_trial_parameters_map_one_to_one():
    choices = [2, 4, 6, 8]
    recipe = {"a": 6, "b": [4, 6, 8], "c": [2, 4, 6, 8]}
    params = recipe_params(recipe, choices)
    assert params == {"a": 6, "a:span": 1, "b": 8, "b:span": 3, "c": 8, "c:span": 4}
    assert params_recipe(params, choices) == recipe
    # A window longer than the checkpoints before its end starts at the first one.
    assert params_recipe({"a": 4, "a:span": 3}, choices) == {"a": [2, 4]}
    # A trial of the old format (no span) reads as single epochs.
    assert params_recipe({"a": 4}, choices) == {"a": 4}
    with pytest.raises(ValueError, match="not consecutive"):
        recipe_params({"a": [2, 6]}, choices)


def test_the_best_recipe_follows_the_studys_direction_and_skips_damaged_epochs(tmp_path):
    choices = [2, 4, 6]
    dist = {"g": optuna.distributions.CategoricalDistribution(choices),
            "g:span": optuna.distributions.IntDistribution(1, 3)}
    trials = [({"g": 2, "g:span": 1}, 0.70), ({"g": 6, "g:span": 3}, 0.80), ({"g": 4, "g:span": 1}, 0.75)]
    best = {}
    for direction in ("minimize", "maximize"):
        study = optuna.create_study(direction=direction)
        for params, value in trials:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dist, value=value,
                                                      user_attrs={"val_loss": 1.0}))
        best[direction] = best_recipe(study, choices)
        # Both trials that read epoch 2 are out, in either direction.
        assert best_recipe(study, choices, damaged={2}) == ({"g": 4}, 0.75)
    assert best["minimize"] == ({"g": 2}, 0.70)
    assert best["maximize"] == ({"g": [2, 4, 6]}, 0.80)


def test_the_best_single_checkpoint_follows_the_monitor():
    history = [{"epoch": 2, "val_loss": 0.9, "val_acc": 0.70},
               {"epoch": 4, "val_loss": 1.0, "val_acc": 0.74},
               {"epoch": 6, "val_loss": 1.1, "val_acc": 0.73}]
    assert best_single_epoch(history, [2, 4, 6], Monitor("val_loss"), "emotion") == 2
    assert best_single_epoch(history, [2, 4, 6], Monitor("val_acc"), "emotion") == 4


def _study_context(tmp_path, embedded_small):
    """A session with two checkpoints (epochs 2 and 4), a model and the run context."""
    ds, data = embedded_small
    session = Session.create(tmp_path, "s")
    spec, _, _ = _saved(session.path("checkpoints"))
    model = build_model("tiny", ds.tasks)
    return spec, model, RunContext(tasks=ds.tasks, build=lambda: (model, spec), train=data,
                                   val=data, session=session, progress=False)


def test_the_crossover_objective_is_the_monitor_in_its_direction(tmp_path, embedded_small):
    spec, model, ctx = _study_context(tmp_path, embedded_small)
    study = optuna.create_study(direction="maximize", sampler=ResumableTPESampler(0))
    run_crossover_study(study, ctx, spec, [2, 4], [{g: 2 for g in spec.groups}], model, 2,
                        monitor=Monitor("val_acc"))
    for t in study.trials:
        assert t.value == t.user_attrs["val_acc"] and "val_loss" in t.user_attrs


def test_a_clipped_window_is_the_earlier_trials_recipe_and_completes_with_its_value(
        tmp_path, embedded_small):
    spec, model, ctx = _study_context(tmp_path, embedded_small)
    study = optuna.create_study(sampler=ResumableTPESampler(0))
    sweet = {g: 2 for g in spec.groups}
    run_crossover_study(study, ctx, spec, [2, 4], [sweet], model, 1)
    # Over checkpoints 2 and 4, a window of two ending at 2 is clipped to epoch 2 alone.
    clipped = {k: v for g in spec.groups for k, v in ((g, 2), (f"{g}:span", 2))}
    assert params_recipe(clipped, [2, 4]) == sweet
    study.enqueue_trial(clipped)
    run_crossover_study(study, ctx, spec, [2, 4], [sweet], model, 2)
    first, second = study.trials
    assert second.state == TrialState.COMPLETE  # counted, not pruned
    assert second.user_attrs["same_recipe_as"] == first.number
    assert second.value == first.value
    assert second.user_attrs["val_acc"] == first.user_attrs["val_acc"]
