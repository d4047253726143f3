"""Phase 4 building block: assemble a model from different checkpoint epochs per group.

A recipe maps each module group to a checkpoint epoch. Assembly reads, for each group,
only that group's file of that epoch with safetensors ``safe_open`` (no full checkpoint
load, no pickle), after checking that one file against its manifest (size and sha256)
once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from model.groups import GroupSpec
from model.tasks import TaskSpec
from model.training import EncodedData, evaluate
from storage import json_safe
from storage.checkpoints import checkpoint_dir, load_tensors, verify_file

from ._workers import WORKER_ATTR, worker_id

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
        state.update(load_tensors(_verified_group_file(root, epoch, group)))
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


def best_single_epoch(history: Sequence[Mapping[str, Any]], checkpoints: Sequence[int]) -> int:
    """The checkpoint with the lowest val loss (chosen on val only)."""
    by_epoch = {h["epoch"]: h for h in history}
    return min(checkpoints, key=lambda e: (by_epoch[e]["val_loss"], e))


def run_crossover_study(
    study: optuna.Study,
    root: Path,
    spec: GroupSpec,
    checkpoints: Sequence[int],
    first_recipes: Sequence[Mapping[str, int]],
    model: nn.Module,
    val: EncodedData,
    tasks: Sequence[TaskSpec],
    n_trials: int,
    device: str = "cpu",
    stale_after_s: float = 3600.0,
) -> None:
    """Search one checkpoint epoch per group, minimizing the fused val loss.

    ``first_recipes`` (the sweet-spot combination, the best single checkpoint) are queued
    first; finished trials are never run again, so a rerun only tops the study up.
    """
    from .lr_sweep import fail_stale_trials  # shared stale-trial handling

    fail_stale_trials(study, stale_after_s)
    choices = [int(c) for c in checkpoints]
    for recipe in first_recipes:
        study.enqueue_trial({g: int(e) for g, e in recipe.items()}, skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        recipe = {g: trial.suggest_categorical(g, choices) for g in spec.groups}
        metrics = evaluate_state(model, assemble_state(root, recipe, spec), val, tasks, device)
        trial.set_user_attr("val_acc", metrics["acc"])
        trial.set_user_attr("val_task_metrics", json_safe(metrics["task_metrics"]))
        return metrics["loss"]

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if done < n_trials:
        study.optimize(objective, n_trials=n_trials - done, catch=())
