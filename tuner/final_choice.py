"""The final choice: a combined model replaces the best single checkpoint only when it beats
it on rows no candidate was fitted on, by more than noise. Pure functions over per-row
predictions, so the rule is tested without training.

The rule, fixed before any test score is read (docs/phases/4-crossover.md):

1. *Nominate* on the search rows: among the single-weights candidates that combine
   checkpoints (crossovers, soups, the EMA; not the best or the last checkpoint as saved),
   the one best under the run's monitor (ties by val loss). The search rows fitted every
   candidate, so this is a nomination only.
2. *Confirm* on the held-out selection rows (``tuner.holdout``): the nominee's gain over the
   best single checkpoint under the monitor, with a one-sided 95% paired-bootstrap lower
   bound (2,000 resamples of the selection rows, seeded by the run's seed).
3. The nominee is the final model when that lower bound is above zero; otherwise the best
   single checkpoint is.

One nominee, one test: the selection rows are not searched over, so the confirmed gain is
not a best-of-many. For a monitor that is a mean over rows (a loss, an accuracy, an MSE) the
bootstrap resamples per-row values; an F1 is recomputed on each resample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.tasks import TaskSpec

from .monitor import Monitor
from .uncertainty import macro_f1

REFERENCE = "best_single_checkpoint"
# Rows that are one checkpoint as saved: the reference is the best of them on the search rows
# already, so none of them is nominated against it.
SINGLE_CHECKPOINTS = (REFERENCE, "last_epoch")
RULE = ("the best single checkpoint is the final model unless the combined single-weights "
        "candidate best on the search rows beats it on the held-out selection rows by more "
        "than noise: a one-sided 95% paired-bootstrap lower bound of its gain above zero")


@dataclass(frozen=True)
class ChoiceConfig:
    resamples: int = 2000
    level: float = 0.95  # one-sided
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100, got {self.resamples!r}")
        if not 0.5 < self.level < 1.0:
            raise ValueError(f"level must be in (0.5, 1), got {self.level!r}")


def _task(monitor: Monitor, tasks: Sequence[TaskSpec]) -> TaskSpec:
    name = monitor.task or tasks[0].name
    return next(t for t in tasks if t.name == name)


def _row_loss(spec: TaskSpec, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row task loss (N,), whose mean is ``model.tasks.task_loss``."""
    pred = pred.float()
    if spec.kind == "single":
        return F.cross_entropy(pred, target, reduction="none")
    if spec.kind == "multi":
        return F.binary_cross_entropy_with_logits(pred, target, reduction="none").mean(-1)
    return F.mse_loss(pred, target, reduction="none").mean(-1)


def row_scores(monitor: Monitor, outputs: Mapping[str, torch.Tensor],
               targets: Mapping[str, torch.Tensor], tasks: Sequence[TaskSpec]) -> np.ndarray | None:
    """Per-row values of the monitor, lower is better (N,), whose mean is the monitor's value
    (or its error for an accuracy); None for an F1, which is not a mean over rows."""
    if monitor.name == "val_loss":
        total = sum(_row_loss(t, outputs[t.name], targets[t.name]) for t in tasks)
        return total.double().numpy()
    spec, metric = _task(monitor, tasks), monitor.metric
    pred, target = outputs[spec.name], targets[spec.name]
    if metric in ("loss", "mse"):
        return _row_loss(spec, pred, target).double().numpy()
    if metric == "accuracy":
        right = (pred.argmax(-1) == target) if spec.kind == "single" else (
            (pred > 0) == (target > 0.5)).all(-1)
        return (~right).double().numpy()
    return None


def _micro_f1(hit: np.ndarray, true: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Micro-F1 of multi-label predictions on each resample: hit/true (N, C) bool -> (R,)."""
    tp = (hit & true).sum(1)[idx].sum(1)
    wrong = (hit ^ true).sum(1)[idx].sum(1)
    return np.where(2 * tp + wrong > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)


def _f1_loss(monitor: Monitor, outputs: Mapping[str, torch.Tensor],
             targets: Mapping[str, torch.Tensor], tasks: Sequence[TaskSpec], idx: np.ndarray,
             ) -> np.ndarray:
    """1 - the monitor's F1 on each resample (R,)."""
    spec = _task(monitor, tasks)
    pred, target = outputs[spec.name], targets[spec.name]
    if spec.kind == "single":
        return 1.0 - macro_f1(pred.argmax(-1).numpy(), target.numpy(), idx)
    return 1.0 - _micro_f1((pred > 0).numpy(), (target > 0.5).numpy(), idx)


def paired_gain(monitor: Monitor, reference: tuple[Mapping, Mapping], contender: tuple[Mapping, Mapping],
                tasks: Sequence[TaskSpec], cfg: ChoiceConfig = ChoiceConfig()) -> dict[str, Any]:
    """The contender's gain over the reference on the same rows, in the monitor's units
    (positive: the contender is better), with its one-sided lower bound. ``reference`` and
    ``contender``: (outputs, targets), task -> (N, C) tensors on the CPU."""
    ref_out, target = reference
    cand_out, _ = contender
    n = len(next(iter(target.values())))
    rng = np.random.default_rng([cfg.seed, 0xF1A1])
    idx = rng.integers(0, n, size=(cfg.resamples, n))
    ref_rows = row_scores(monitor, ref_out, target, tasks)
    if ref_rows is not None:
        diffs = ref_rows - row_scores(monitor, cand_out, target, tasks)  # > 0: contender better
        gain, resampled = float(diffs.mean()), diffs[idx].mean(axis=1)
    else:
        full = np.arange(n)[None, :]
        gain = float((_f1_loss(monitor, ref_out, target, tasks, full)
                      - _f1_loss(monitor, cand_out, target, tasks, full))[0])
        resampled = (_f1_loss(monitor, ref_out, target, tasks, idx)
                     - _f1_loss(monitor, cand_out, target, tasks, idx))
    lower = float(np.percentile(resampled, 100 * (1 - cfg.level)))
    return {"gain": gain, "lower_bound": lower, "level": cfg.level, "one_sided": True,
            "resamples": cfg.resamples, "rows": n, "seed": cfg.seed}


def nominee(rows: Sequence[Mapping[str, Any]], monitor: Monitor, primary: str) -> str | None:
    """The single-weights candidate best on the search rows other than the reference (the
    table's ``val_`` columns are the search rows), or None when there is none."""
    pool = [r for r in rows if r["single_model"] and not r.get("reference")
            and r["candidate"] not in SINGLE_CHECKPOINTS]
    if not pool:
        return None
    return min(pool, key=lambda r: monitor.key(r, primary))["candidate"]


def decide(nominated: str | None, gain: Mapping[str, Any] | None) -> dict[str, Any]:
    """The final model's name and why, from the nominee and its confirmed gain."""
    if nominated is None or gain is None:
        return {"final": REFERENCE, "nominee": nominated, "confirmed": False,
                "reason": "no other single-weights candidate to nominate"}
    confirmed = gain["lower_bound"] > 0
    return {"final": nominated if confirmed else REFERENCE, "nominee": nominated,
            "confirmed": confirmed, "selection_gain": dict(gain),
            "reason": (f"{nominated} gains {gain['gain']:+.4g} on the {gain['rows']} selection "
                       f"rows, one-sided {gain['level']:.0%} lower bound {gain['lower_bound']:+.4g}"
                       f" {'>' if confirmed else '<='} 0: "
                       + ("it replaces the best single checkpoint" if confirmed
                          else "not more than noise, the best single checkpoint stays"))}


__all__ = ["REFERENCE", "RULE", "SINGLE_CHECKPOINTS", "ChoiceConfig", "decide", "nominee", "paired_gain",
           "row_scores"]
