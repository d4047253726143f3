"""Module groups: the one place that says which parameters move together.

Checkpoints (one file per group), layer-wise LR decay, per-group sweet spots
and the crossover all read a :class:`GroupSpec`; nothing else hard-codes
parameter names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .toml_file import read_toml


@dataclass(frozen=True)
class GroupSpec:
    """Parameter groups of a model, by name prefix.

    groups: group name -> parameter-name prefixes (a prefix ends with ".").
    group_losses: group name -> the loss keys (see ``model.training``) that
        measure that group on its own; used to find its sweet spot.
    independent: groups that may take any checkpoint epoch in the crossover.
    layers: prefixes of the stacked layers, bottom to top (for LLRD).
    below_layers: prefixes under the first layer (embeddings; lowest LLRD rate).
    analyzers: prefixes trained at ``analyzer_lr_scale`` x the base LR.
    Everything else (heads, final norms) trains at the base LR.
    """

    groups: Mapping[str, tuple[str, ...]]
    group_losses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    independent: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    below_layers: tuple[str, ...] = ()
    analyzers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a GroupSpec needs at least one group, got none")
        for name, prefixes in self.groups.items():
            if not prefixes:
                raise ValueError(f"group {name!r} has no parameter prefixes")
        unknown = set(self.group_losses) - set(self.groups)
        if unknown:
            raise ValueError(f"group_losses names unknown groups {sorted(unknown)!r}")
        unknown = set(self.independent) - set(self.groups)
        if unknown:
            raise ValueError(f"independent names unknown groups {sorted(unknown)!r}")

    def group_of(self, param_name: str) -> str:
        """The one group that owns ``param_name``; error if none or several."""
        owners = [
            g for g, prefixes in self.groups.items() if any(param_name.startswith(p) for p in prefixes)
        ]
        if len(owners) != 1:
            raise ValueError(
                f"parameter {param_name!r} must belong to exactly one group, belongs to {owners!r}"
            )
        return owners[0]

    def partition(self, model: nn.Module) -> dict[str, list[str]]:
        """Group name -> names of its tensors in ``model.state_dict()`` (params and buffers).

        Raises ValueError if a tensor belongs to no group or to several.
        """
        out: dict[str, list[str]] = {g: [] for g in self.groups}
        for name in model.state_dict():
            out[self.group_of(name)].append(name)
        return out

    def named_parameters_of(
        self, model: nn.Module, group: str
    ) -> Iterator[tuple[str, nn.Parameter]]:
        prefixes = self.groups[group]
        for name, p in model.named_parameters():
            if any(name.startswith(pre) for pre in prefixes):
                yield name, p

    def group_state(self, model: nn.Module, group: str) -> dict[str, torch.Tensor]:
        """The group's slice of ``model.state_dict()``."""
        prefixes = self.groups[group]
        return {
            k: v for k, v in model.state_dict().items() if any(k.startswith(p) for p in prefixes)
        }


def load_groups_file(path: str | Path) -> dict[str, tuple[str, ...]]:
    """``--groups FILE``: a TOML table of group name -> list of parameter-name prefixes."""
    path = Path(path)
    data = read_toml(path, "the groups file")
    if not data:
        raise ValueError(f"{path}: no groups; expected lines like  head = [\"classifier.\"]")
    for name, prefixes in data.items():
        if not (isinstance(prefixes, list) and prefixes
                and all(isinstance(p, str) and p for p in prefixes)):
            raise ValueError(f"{path}: group {name!r}: expected a non-empty list of parameter-name "
                             f"prefixes, got {prefixes!r}")
    return {name: tuple(prefixes) for name, prefixes in data.items()}


def with_groups(spec: GroupSpec, groups: Mapping[str, tuple[str, ...]]) -> GroupSpec:
    """``spec`` with other groups (its layers for LLRD kept); a group's own loss and
    independence carry over where its name does."""
    return replace(spec, groups=dict(groups),
                   group_losses={g: v for g, v in spec.group_losses.items() if g in groups},
                   independent=tuple(g for g in spec.independent if g in groups))
