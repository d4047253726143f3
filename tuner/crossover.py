"""Phase 4 building block: assemble a model from different checkpoint epochs per group.

A recipe maps each module group to a checkpoint epoch, or to a window of consecutive
checkpoints whose weights are averaged uniformly (a per-group soup). Assembly reads, for
each group, only that group's files of those epochs with safetensors (no full checkpoint
load, no pickle), after checking each file against its manifest (size and sha256) once
per process.

The crossover study searches, per group, the window's last checkpoint (``<group>``) and
its length in checkpoints (``<group>:span``; 1 is the strategy's single epoch). The
sweet-spot recipe, the best single checkpoint and the uniform soup are points of that
space and are queued first.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from model.data import EncodedData
from model.groups import GroupSpec
from model.tasks import TaskSpec
from model.training import evaluate
from storage import crash_point, json_safe
from storage.checkpoints import checkpoint_dir, load_tensors, verify_file

from ._workers import WORKER_ATTR, fail_stale_trials, trial_heartbeat, worker_id
from .context import RunContext
from .ensembles import average_states
from .monitor import VAL_LOSS, Monitor

logger = logging.getLogger(__name__)

_VERIFIED: set[Path] = set()


def verified_group_file(root: Path, epoch: int, group: str) -> Path:
    """The path of ``group``'s file of checkpoint ``epoch``, checked against its manifest
    (once per process); CheckpointError names a damaged file."""
    path = checkpoint_dir(root, epoch) / f"{group}.safetensors"
    if path not in _VERIFIED:
        verify_file(path.parent, path.name)  # CheckpointError names the damaged file
        _VERIFIED.add(path)
    return path


Recipe = Mapping[str, int | Sequence[int]]  # group -> epoch, or the epochs of a window
SPAN = ":span"  # the suffix of a group's window-length parameter


def members(value: int | Sequence[int]) -> tuple[int, ...]:
    """The checkpoint epochs of one group's entry in a recipe."""
    return (int(value),) if isinstance(value, int | np.integer) else tuple(int(e) for e in value)


def recipe_epochs(recipe: Recipe) -> set[int]:
    """Every checkpoint epoch a recipe reads."""
    return {e for v in recipe.values() for e in members(v)}


def assemble_state(root: Path, recipe: Recipe, spec: GroupSpec) -> dict[str, torch.Tensor]:
    """The state dict of the crossover model ``recipe`` (group -> epoch, or group -> the
    epochs whose weights are averaged for it)."""
    missing = set(spec.groups) - set(recipe)
    if missing:
        raise ValueError(f"the recipe names no epoch for groups {sorted(missing)!r}")
    unknown = set(recipe) - set(spec.groups)
    if unknown:
        raise ValueError(f"the recipe names unknown groups {sorted(unknown)!r}")
    state: dict[str, torch.Tensor] = {}
    for group, value in recipe.items():
        epochs = members(value)
        if not epochs:
            raise ValueError(f"the recipe names no epoch for group {group!r}")
        if len(epochs) == 1:
            state.update(load_tensors(verified_group_file(root, epochs[0], group), upcast=True))
        else:
            state.update(average_states(load_tensors(verified_group_file(root, e, group), upcast=True)
                                        for e in epochs))
    return state


def load_crossover(model: nn.Module, root: Path, recipe: Recipe, spec: GroupSpec) -> nn.Module:
    """Load the crossover ``recipe`` into ``model`` (strict: every tensor must be covered)."""
    model.load_state_dict(assemble_state(root, recipe, spec), strict=True)
    return model


# ----------------------------------------------------------------------------- the study

def evaluate_state(model: nn.Module, state: Mapping[str, torch.Tensor], data: EncodedData,
                   tasks: Sequence[TaskSpec], device: str = "cpu") -> dict[str, Any]:
    """Load ``state`` into ``model`` and evaluate it on ``data``."""
    model.load_state_dict(state, strict=True)
    return evaluate(model, data, tasks, device=device)


def window(choices: Sequence[int], end: int, span: int) -> tuple[int, ...]:
    """The ``span`` checkpoints of ``choices`` that end at ``end`` (fewer at the start)."""
    i = list(choices).index(end)
    return tuple(choices[max(0, i - span + 1): i + 1])


def recipe_params(recipe: Recipe, choices: Sequence[int]) -> dict[str, int]:
    """The study's parameters of a recipe: per group its window's last epoch and length."""
    out: dict[str, int] = {}
    for group, value in recipe.items():
        epochs = members(value)
        end, span = epochs[-1], len(epochs)
        if end not in choices or window(choices, end, span) != epochs:
            raise ValueError(f"group {group!r}: epochs {list(epochs)} are not consecutive "
                             f"checkpoints of {list(choices)}")
        out[group], out[group + SPAN] = end, span
    return out


def params_recipe(params: Mapping[str, Any], choices: Sequence[int]) -> dict[str, int | list[int]]:
    """The recipe of a trial's parameters: an epoch per group, or a window's epochs. A
    trial of the old format (no span) reads as single epochs."""
    out: dict[str, int | list[int]] = {}
    for name, end in params.items():
        if name.endswith(SPAN):
            continue
        epochs = window(choices, int(end), int(params.get(name + SPAN, 1)))
        out[name] = epochs[0] if len(epochs) == 1 else list(epochs)
    return out


def best_recipe(study: optuna.Study, choices: Sequence[int], damaged: Collection[int] = (),
                ) -> tuple[dict[str, int | list[int]], float]:
    """The completed trial best under the study's direction (ties: lower val loss, then the
    earlier trial) whose epochs are all intact."""
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if not recipe_epochs(params_recipe(t.params, choices)) & set(damaged)]
    if not trials:
        raise ValueError(f"{study.study_name}: no completed crossover trial on intact checkpoints")
    best = min(trials, key=lambda t: (sign * t.value, t.user_attrs.get("val_loss", 0.0), t.number))
    return params_recipe(best.params, choices), float(best.value)


def best_single_epoch(history: Sequence[Mapping[str, Any]], checkpoints: Sequence[int],
                      monitor: Monitor = VAL_LOSS, primary: str = "") -> int:
    """The checkpoint best under the monitor (chosen on val only)."""
    by_epoch = {h["epoch"]: h for h in history}
    return monitor.best_in_order([(e, by_epoch[e]) for e in checkpoints], primary)


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


class ResumableTPESampler(optuna.samplers.BaseSampler):
    """TPE whose randomness depends only on the seed and how many trials have completed.

    Each trial is decided by a fresh ``TPESampler`` seeded from (seed, completed trials).
    Optuna's own seeded sampler draws from one RNG stream that a restart resets, so a run
    killed mid-study would propose different recipes than an unbroken one; this one
    proposes the same, because TPE only learns from completed trials.
    """

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._inner = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seed = int(np.random.SeedSequence([self._seed, _n_complete(study)]).generate_state(1)[0])
        self._inner = optuna.samplers.TPESampler(seed=seed)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)


QUEUED_ATTR = "queued_recipe"  # parameters queued before TPE (sweet spots, best single, soup)


DUPLICATE_ATTR = "same_recipe_as"  # a trial whose window equals an earlier trial's


def canonical_params(params: Mapping[str, Any], choices: Sequence[int]) -> dict[str, int]:
    """The parameters of the recipe ``params`` stand for: a window that reaches back past
    the first checkpoint is clipped there, so (end 4, span 3) and (end 4, span 2) over
    checkpoints 2, 4, 6 are the same recipe and the same canonical parameters."""
    return recipe_params(params_recipe(params, choices), choices)


def _same_recipe(study: optuna.Study, params: Mapping[str, int], choices: Sequence[int],
                 states: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.RUNNING,
                                                   TrialState.WAITING),
                 ) -> optuna.trial.FrozenTrial | None:
    """The first trial in one of ``states`` (by default: finished, running or waiting)
    whose recipe is the recipe of ``params`` (compared canonically), or None."""
    want = canonical_params(params, choices)
    for t in study.get_trials(deepcopy=False, states=states):
        found = t.params or t.user_attrs.get(QUEUED_ATTR, {})
        if found and canonical_params(found, choices) == want:
            return t
    return None


def run_crossover_study(
    study: optuna.Study,
    ctx: RunContext,
    spec: GroupSpec,
    checkpoints: Sequence[int],
    first_recipes: Sequence[Recipe],
    model: nn.Module,
    n_trials: int,
    damaged: Collection[int] = (),
    monitor: Monitor = VAL_LOSS,
) -> None:
    """Search, per group, one checkpoint epoch or a window of consecutive checkpoints
    averaged uniformly, by the monitor on val (the study's direction is the monitor's).

    Checkpoints are read from the session's ``checkpoints/``. ``first_recipes`` (the
    sweet-spot combination, the best single checkpoint, the uniform soup) are queued first;
    finished trials are never run again, so a rerun only tops the study up to ``n_trials``
    completed trials. A trial left running by a killed process is marked failed and its
    recipe queued again. ``checkpoints`` is every saved epoch (the search space must not
    change between runs); a recipe that reads a ``damaged`` one is pruned without loading
    anything.
    """
    fail_stale_trials(study, ctx.heartbeat)
    root = ctx.session.path("checkpoints")
    choices = [int(c) for c in checkpoints]
    primary = ctx.tasks[0].name
    queue = [recipe_params(recipe, choices) for recipe in first_recipes]

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        params = {}
        for g in spec.groups:
            params[g] = trial.suggest_categorical(g, choices)
            params[g + SPAN] = trial.suggest_int(g + SPAN, 1, len(choices))
        recipe = params_recipe(params, choices)
        # The same recipe under other parameters (a clipped window) is not evaluated again:
        # the trial completes with the earlier value, so it counts toward n_trials and TPE
        # reads the same history an unbroken run would.
        earlier = _same_recipe(study, params, choices, states=(TrialState.COMPLETE,))
        if earlier is not None:
            trial.set_user_attr(DUPLICATE_ATTR, earlier.number)
            for key in ("val_loss", "val_acc", "val_task_metrics"):
                if key in earlier.user_attrs:
                    trial.set_user_attr(key, earlier.user_attrs[key])
            logger.info("crossover trial %d: %s is trial %d's recipe -> %s %.4f", trial.number,
                        recipe, earlier.number, monitor.name, earlier.value)
            return float(earlier.value)
        bad = sorted(recipe_epochs(recipe) & set(damaged))
        if bad:
            trial.set_user_attr("skipped", f"uses damaged checkpoint epochs {bad}")
            raise optuna.TrialPruned(f"uses damaged checkpoint epochs {bad}")
        with trial_heartbeat(trial, ctx.heartbeat):
            metrics = evaluate_state(model, assemble_state(root, recipe, spec), ctx.val,
                                     ctx.tasks, ctx.device)
        crash_point(f"crossover:trial:{_n_complete(study)}")  # evaluated, not yet told
        value = monitor.value(metrics, primary)
        trial.set_user_attr("val_loss", metrics["loss"])
        trial.set_user_attr("val_acc", metrics["acc"])
        trial.set_user_attr("val_task_metrics", json_safe(metrics["task_metrics"]))
        logger.info("crossover trial %d: %s -> %s %.4f (val loss %.4f, acc %.4f)", trial.number,
                    recipe, monitor.name, value, metrics["loss"], metrics["acc"])
        return value

    # The queued recipes run one at a time, in order: a recipe whose trial died is queued
    # again and still runs before the next one, so the completed trials (which TPE reads in
    # order) come out as in an unbroken run.
    for params in queue:
        if _same_recipe(study, params, choices, states=(TrialState.COMPLETE,)):
            continue
        if not _same_recipe(study, params, choices):
            study.enqueue_trial(params, user_attrs={QUEUED_ATTR: params})
        study.optimize(objective, n_trials=1, catch=(), show_progress_bar=False)
    # Pruned trials (damaged epochs) do not count: top up until n_trials completed, with a
    # bound so a search space that is mostly damaged cannot loop for ever.
    for _ in range(10):
        done = _n_complete(study)
        if done >= n_trials:
            break
        study.optimize(objective, n_trials=n_trials - done, catch=(), show_progress_bar=ctx.progress)
