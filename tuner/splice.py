"""Phase 3's per-group evidence: each group spliced into a reference model, checkpoint by
checkpoint, and evaluated on val.

For a group g and a checkpoint e, the model is the reference state (the best single
checkpoint) with only g's tensors replaced by those of epoch e. Its val metrics tell when
g itself was best while every other group stays fixed, for any model, whether or not it
declares per-module losses. Each evaluation reads one group file (safetensors, checked
against its manifest once per process), as the crossover does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from model.data import EncodedData
from model.groups import GroupSpec
from model.tasks import TaskSpec
from model.training import evaluate
from storage.checkpoints import load_tensors

from .crossover import assemble_state, verified_group_file

logger = logging.getLogger(__name__)

_KEPT = ("loss", "acc", "task_loss", "task_metrics")


def splice_evaluations(model: nn.Module, root: Path, spec: GroupSpec, reference: int,
                       epochs: Mapping[str, Sequence[int]], val: EncodedData,
                       tasks: Sequence[TaskSpec], device: str = "cpu", progress: bool = False,
                       known: Mapping[str, Mapping[int, dict[str, Any]]] | None = None,
                       ) -> dict[str, dict[int, dict[str, Any]]]:
    """group -> epoch -> val metrics of the reference with that group from that epoch.

    ``epochs``: for each group, the checkpoints to try. The reference itself is evaluated
    once and shared by every group. ``known``: evaluations an earlier (interrupted) phase 3
    made against the same reference; checkpoints are never rewritten, so they still hold
    and are not evaluated again."""
    start = time.perf_counter()
    known = known or {}
    base = assemble_state(root, {g: reference for g in spec.groups}, spec)
    at_reference = next((per[reference] for per in known.values() if reference in per), None)
    if at_reference is None:
        model.load_state_dict(base, strict=True)
        at_reference = _kept(evaluate(model, val, tasks, device=device))
    out: dict[str, dict[int, dict[str, Any]]] = {
        g: ({reference: at_reference} if reference in es else {}) for g, es in epochs.items()}
    kept = 0
    for g, es in epochs.items():
        earlier = {e: m for e, m in known.get(g, {}).items() if e in es and e != reference}
        out[g].update(earlier)
        kept += len(earlier)
    todo = [(g, e) for g, es in epochs.items() for e in es if e not in out[g]]
    for group, epoch in tqdm(todo, desc="phase 3: splicing", unit="eval", disable=not progress):
        own = load_tensors(verified_group_file(root, epoch, group), upcast=True)
        model.load_state_dict({**base, **own}, strict=True)
        out[group][epoch] = _kept(evaluate(model, val, tasks, device=device))
    logger.info("phase 3: %d spliced evaluations (%d groups, reference epoch %d; %d kept from "
                "an earlier run) in %.1f s", len(todo), len(epochs), reference,
                kept, time.perf_counter() - start)
    return out


def _kept(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in _KEPT}


__all__ = ["splice_evaluations"]
