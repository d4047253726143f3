"""Prediction tasks: what each head predicts, its loss and its metrics.

Three kinds come from the data: single-label (cross entropy; accuracy and
macro-F1), multi-label (binary cross entropy; micro-F1) and regression (MSE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

TaskKind = Literal["single", "multi", "regression"]
_KINDS = ("single", "multi", "regression")


@dataclass(frozen=True)
class TaskSpec:
    """One prediction target: ``num_outputs`` logits (classes) or 1 value (regression)."""

    name: str
    kind: TaskKind
    num_outputs: int

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"task name must be a Python identifier, got {self.name!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"task kind must be one of {_KINDS}, got {self.kind!r}")
        if self.kind == "regression" and self.num_outputs != 1:
            raise ValueError(f"a regression task has 1 output, got {self.num_outputs!r}")
        if self.kind == "single" and self.num_outputs < 2:
            raise ValueError(f"a single-label task needs >= 2 classes, got {self.num_outputs!r}")
        if self.num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {self.num_outputs!r}")


# The embedded kaomoji corpus (rows whose category is not "uncategorized"):
# 51 emotion categories, 75 intent tags, 65 subject tags. tests/storage checks
# these against storage.corpus so the two never drift apart.
EMBEDDED_TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("emotion", "single", 51),
    TaskSpec("intent", "multi", 75),
    TaskSpec("subject", "multi", 65),
)


def task_loss(
    spec: TaskSpec, pred: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean loss of one task. ``pred`` (B, C); ``target`` (B,) int64 for single-label,
    (B, C) float for multi-label, (B, 1) float for regression."""
    pred = pred.float()
    if spec.kind == "single":
        return F.cross_entropy(pred, target, label_smoothing=label_smoothing)
    if spec.kind == "multi":
        return F.binary_cross_entropy_with_logits(pred, target)
    return F.mse_loss(pred, target)


def consistency_loss(spec: TaskSpec, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric divergence between two predictions of the same rows (R-Drop).

    Single-label: 0.5 * (KL(p_a||p_b) + KL(p_b||p_a)) over the class softmax;
    multi-label: the same over each label's Bernoulli; regression: MSE.
    """
    a, b = a.float(), b.float()
    if spec.kind == "single":
        la, lb = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
        kl_ab = F.kl_div(lb, la, log_target=True, reduction="batchmean")
        kl_ba = F.kl_div(la, lb, log_target=True, reduction="batchmean")
        return 0.5 * (kl_ab + kl_ba)
    if spec.kind == "multi":
        # log p and log (1 - p) of each label, stacked as a 2-class distribution.
        la = torch.stack([F.logsigmoid(a), F.logsigmoid(-a)], dim=-1)
        lb = torch.stack([F.logsigmoid(b), F.logsigmoid(-b)], dim=-1)
        kl_ab = (la.exp() * (la - lb)).sum(-1).mean()
        kl_ba = (lb.exp() * (lb - la)).sum(-1).mean()
        return 0.5 * (kl_ab + kl_ba)
    return F.mse_loss(a, b)


def correct_rows(spec: TaskSpec, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rows predicted right (argmax; all labels for multi-label) as a 0-d tensor (no sync)."""
    if spec.kind == "single":
        return (pred.argmax(-1) == target).sum()
    if spec.kind == "multi":
        return ((pred > 0) == (target > 0.5)).all(-1).sum()
    return torch.zeros((), dtype=torch.long, device=pred.device)


@dataclass
class TaskCounts:
    """Running sufficient statistics for one task's metrics over an epoch."""

    spec: TaskSpec
    rows: int = 0
    correct: int = 0
    sq_error: float = 0.0
    tp: torch.Tensor | None = None  # (C,) true positives per class / label
    fp: torch.Tensor | None = None
    fn: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.detach().float()
        self.rows += pred.shape[0]
        if self.spec.kind == "regression":
            self.sq_error += float(((pred - target) ** 2).sum())
            return
        c = self.spec.num_outputs
        if self.spec.kind == "single":
            guess = pred.argmax(-1)
            self.correct += int((guess == target).sum())
            hit = F.one_hot(guess, c).bool()
            true = F.one_hot(target, c).bool()
        else:
            hit = pred > 0
            true = target > 0.5
            self.correct += int((hit == true).all(-1).sum())
        tp, fp, fn = (hit & true).sum(0), (hit & ~true).sum(0), (~hit & true).sum(0)
        self.tp = tp if self.tp is None else self.tp + tp
        self.fp = fp if self.fp is None else self.fp + fp
        self.fn = fn if self.fn is None else self.fn + fn

    def metrics(self) -> dict[str, float]:
        """accuracy + macro_f1 (single), exact-match accuracy + micro_f1 (multi), mse."""
        if self.rows == 0:
            return {}
        if self.spec.kind == "regression":
            return {"mse": self.sq_error / self.rows}
        out = {"accuracy": self.correct / self.rows}
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        if self.spec.kind == "single":
            # Macro-F1 over classes present in targets or predictions.
            present = (tp + fp + fn) > 0
            f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
            out["macro_f1"] = float(f1[present].mean()) if bool(present.any()) else 0.0
        else:
            denom = float(2 * tp.sum() + fp.sum() + fn.sum())
            out["micro_f1"] = float(2 * tp.sum()) / denom if denom else 0.0
        return out
