"""Phase 4 building block: assemble a model from different checkpoint epochs per group.

A recipe maps each module group to a checkpoint epoch. Assembly reads, for each group,
only that group's file of that epoch with safetensors ``safe_open`` (no full checkpoint
load, no pickle), after checking that one file against its manifest (size and sha256)
once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from model.groups import GroupSpec
from storage.checkpoints import checkpoint_dir, load_tensors, verify_file

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
