"""Phase 4 building block: assemble a model from different checkpoint epochs per group.

A recipe maps each module group to a checkpoint epoch. Assembly reads, for each group,
only that group's file of that epoch with safetensors ``safe_open`` (no full checkpoint
load, no pickle), after checking that one file against its manifest (size and sha256)
once per process.
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

from model.groups import GroupSpec
from model.tasks import TaskSpec
from model.training import EncodedData, evaluate
from storage import crash_point, json_safe
from storage.checkpoints import checkpoint_dir, load_tensors, verify_file

from ._workers import WORKER_ATTR, fail_stale_trials, trial_heartbeat, worker_id
from .context import RunContext

logger = logging.getLogger(__name__)

_VERIFIED: set[Path] = set()


def _verified_group_file(root: Path, epoch: int, group: str) -> Path:
    path = checkpoint_dir(root, epoch) / f"{group}.safetensors"
    if path not in _VERIFIED:
        verify_file(path.parent, path.name)  # CheckpointError names the damaged file
        _VERIFIED.add(path)
    return path


def assemble_state(root: Path, recipe: Mapping[str, int], spec: GroupSpec) -> dict[str, torch.Tensor]:
    """The state dict of the crossover model ``recipe`` (group -> epoch)."""
    missing = set(spec.groups) - set(recipe)
    if missing:
        raise ValueError(f"the recipe names no epoch for groups {sorted(missing)!r}")
    unknown = set(recipe) - set(spec.groups)
    if unknown:
        raise ValueError(f"the recipe names unknown groups {sorted(unknown)!r}")
    state: dict[str, torch.Tensor] = {}
    for group, epoch in recipe.items():
        state.update(load_tensors(_verified_group_file(root, epoch, group), upcast=True))
    return state


def load_crossover(model: nn.Module, root: Path, recipe: Mapping[str, int], spec: GroupSpec) -> nn.Module:
    """Load the crossover ``recipe`` into ``model`` (strict: every tensor must be covered)."""
    model.load_state_dict(assemble_state(root, recipe, spec), strict=True)
    return model


# ----------------------------------------------------------------------------- the study

def evaluate_state(model: nn.Module, state: Mapping[str, torch.Tensor], data: EncodedData,
                   tasks: Sequence[TaskSpec], device: str = "cpu") -> dict[str, Any]:
    """Load ``state`` into ``model`` and evaluate it on ``data``."""
    model.load_state_dict(state, strict=True)
    return evaluate(model, data, tasks, device=device)


def best_recipe(study: optuna.Study, damaged: Collection[int] = ()) -> tuple[dict[str, int], float]:
    """The completed trial with the lowest val loss whose epochs are all intact."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if not any(int(e) in damaged for e in t.params.values())]
    if not trials:
        raise ValueError(f"{study.study_name}: no completed crossover trial on intact checkpoints")
    best = min(trials, key=lambda t: (t.value, t.number))
    return {g: int(e) for g, e in best.params.items()}, float(best.value)


def best_single_epoch(history: Sequence[Mapping[str, Any]], checkpoints: Sequence[int]) -> int:
    """The checkpoint with the lowest val loss (chosen on val only)."""
    by_epoch = {h["epoch"]: h for h in history}
    return min(checkpoints, key=lambda e: (by_epoch[e]["val_loss"], e))


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


QUEUED_ATTR = "queued_recipe"  # a recipe queued before TPE (sweet spots, best single epoch)


def _queued_or_done(study: optuna.Study, recipe: Mapping[str, int],
                    states: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.RUNNING,
                                                      TrialState.WAITING)) -> bool:
    """Whether a trial with exactly ``recipe`` is in one of ``states`` (by default:
    finished, running or waiting)."""
    for t in study.get_trials(deepcopy=False, states=states):
        params = t.params or t.user_attrs.get(QUEUED_ATTR, {})
        if {g: int(e) for g, e in params.items()} == dict(recipe):
            return True
    return False


def run_crossover_study(
    study: optuna.Study,
    ctx: RunContext,
    spec: GroupSpec,
    checkpoints: Sequence[int],
    first_recipes: Sequence[Mapping[str, int]],
    model: nn.Module,
    n_trials: int,
    damaged: Collection[int] = (),
) -> None:
    """Search one checkpoint epoch per group, minimizing the fused val loss.

    Checkpoints are read from the session's ``checkpoints/``. ``first_recipes`` (the
    sweet-spot combination, the best single checkpoint) are queued first; finished trials
    are never run again, so a rerun only tops the study up to ``n_trials`` completed
    trials. A trial left running by a killed process is marked failed and its recipe queued
    again. ``checkpoints`` is every saved epoch (the search
    space must not change between runs); a recipe that uses a ``damaged`` one is pruned
    without loading anything.
    """
    fail_stale_trials(study, ctx.heartbeat)
    root = ctx.session.path("checkpoints")
    choices = [int(c) for c in checkpoints]
    queue = [{g: int(e) for g, e in recipe.items()} for recipe in first_recipes]

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        recipe = {g: trial.suggest_categorical(g, choices) for g in spec.groups}
        bad = sorted({e for e in recipe.values() if e in damaged})
        if bad:
            trial.set_user_attr("skipped", f"uses damaged checkpoint epochs {bad}")
            raise optuna.TrialPruned(f"uses damaged checkpoint epochs {bad}")
        with trial_heartbeat(trial, ctx.heartbeat):
            metrics = evaluate_state(model, assemble_state(root, recipe, spec), ctx.val,
                                     ctx.tasks, ctx.device)
        crash_point(f"crossover:trial:{_n_complete(study)}")  # evaluated, not yet told
        trial.set_user_attr("val_acc", metrics["acc"])
        trial.set_user_attr("val_task_metrics", json_safe(metrics["task_metrics"]))
        logger.info("crossover trial %d: %s -> val loss %.4f acc %.4f", trial.number, recipe,
                    metrics["loss"], metrics["acc"])
        return metrics["loss"]

    # The queued recipes run one at a time, in order: a recipe whose trial died is queued
    # again and still runs before the next one, so the completed trials (which TPE reads in
    # order) come out as in an unbroken run.
    for recipe in queue:
        if _queued_or_done(study, recipe, states=(TrialState.COMPLETE,)):
            continue
        if not _queued_or_done(study, recipe):
            study.enqueue_trial(recipe, user_attrs={QUEUED_ATTR: recipe})
        study.optimize(objective, n_trials=1, catch=(), show_progress_bar=False)
    # Pruned trials (damaged epochs) do not count: top up until n_trials completed, with a
    # bound so a search space that is mostly damaged cannot loop for ever.
    for _ in range(10):
        done = _n_complete(study)
        if done >= n_trials:
            break
        study.optimize(objective, n_trials=n_trials - done, catch=(), show_progress_bar=ctx.progress)
