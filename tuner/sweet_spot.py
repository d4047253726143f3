"""Phase 3: overfitting point and per-group sweet spots, pure functions over epoch reports.

Overfitting criteria (which one decides is a setting; the report shows all):
- ``gap-rise``: the val-minus-train gap rises at ``rises`` checkpoints in a row (default 3,
  so one noisy bump never fires it) -> the checkpoint before the rises.
- ``gl``: Prechelt's GL_alpha, 100 * (val / best val so far - 1) > alpha.
- ``pq``: Prechelt's PQ_alpha, GL / P_k > alpha at the end of each strip of k epochs, where
  P_k = 1000 * (mean train loss of the strip / min train loss of the strip - 1).
- ``up``: Prechelt's UP_s, the val loss at the end of a strip is higher than at the end of
  the previous strip, s strips in a row.
(Prechelt, "Early Stopping - But When?", 1998.) Each criterion's overfitting point is the
last checkpoint before the epoch at which it fires; None when it never fires.

Per-group sweet spot: the checkpoint, up to the overfitting point (independent groups: any
checkpoint), minimizing the strategy's score: group val loss + 0.2 * gap - 0.1 * stability,
with the group's own validation loss (its modules' losses) and the unit-free stability score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CRITERIA = ("gap-rise", "gl", "pq", "up")


@dataclass(frozen=True)
class OverfitConfig:
    # GL decides by default: the strategy's gap rule also fires while val loss still improves
    # (the gap grows from negative, dropout-inflated train loss, toward zero); on the
    # default run it fired at epoch 24 while val loss kept falling to epoch 57.
    decide_by: str = "gl"
    rises: int = 3
    gl_alpha: float = 5.0
    pq_alpha: float = 2.0
    strip: int = 5
    up_strips: int = 3

    def __post_init__(self) -> None:
        if self.decide_by not in CRITERIA:
            raise ValueError(f"decide_by must be one of {CRITERIA}, got {self.decide_by!r}")
        if self.rises < 1:
            raise ValueError(f"rises must be >= 1, got {self.rises!r}")
        if self.gl_alpha <= 0 or self.pq_alpha <= 0:
            raise ValueError(f"alphas must be > 0, got {self.gl_alpha!r}, {self.pq_alpha!r}")
        if self.strip < 2:
            raise ValueError(f"strip must be >= 2, got {self.strip!r}")
        if self.up_strips < 1:
            raise ValueError(f"up_strips must be >= 1, got {self.up_strips!r}")


def gap_rise_rule(epochs: Sequence[int], gaps: Sequence[float], rises: int = 3) -> int | None:
    """Epoch at which the gap has risen ``rises`` checkpoints in a row (None if never)."""
    run = 0
    for i in range(1, len(gaps)):
        run = run + 1 if gaps[i] > gaps[i - 1] else 0
        if run >= rises:
            return epochs[i]
    return None


def gl_rule(epochs: Sequence[int], val: Sequence[float], alpha: float) -> int | None:
    best = math.inf
    for e, v in zip(epochs, val, strict=True):
        best = min(best, v)
        if 100.0 * (v / best - 1.0) > alpha:
            return e
    return None


def pq_rule(epochs: Sequence[int], train: Sequence[float], val: Sequence[float], alpha: float,
            k: int) -> int | None:
    best = math.inf
    for i, (e, v) in enumerate(zip(epochs, val, strict=True)):
        best = min(best, v)
        if (i + 1) % k:
            continue
        strip = train[i - k + 1: i + 1]
        progress = 1000.0 * (sum(strip) / (k * min(strip)) - 1.0)
        gl = 100.0 * (v / best - 1.0)
        # Training that has stalled (P_k = 0) while val is above its best: PQ is infinite.
        if gl > 0 and (progress <= 0 or gl / progress > alpha):
            return e
    return None


def up_rule(epochs: Sequence[int], val: Sequence[float], k: int, s: int) -> int | None:
    ends = [(epochs[i], val[i]) for i in range(k - 1, len(val), k)]
    run = 0
    for j in range(1, len(ends)):
        run = run + 1 if ends[j][1] > ends[j - 1][1] else 0
        if run >= s:
            return ends[j][0]
    return None


def _checkpoint_before(fired: int | None, checkpoints: Sequence[int], rises: int = 0) -> int | None:
    if fired is None:
        return None
    earlier = [c for c in checkpoints if c < fired]
    return earlier[-rises] if rises and len(earlier) >= rises else (earlier[-1] if earlier else None)


def overfitting_points(history: Sequence[Mapping[str, Any]], checkpoints: Sequence[int],
                       cfg: OverfitConfig = OverfitConfig()) -> dict[str, dict[str, Any]]:
    """Per criterion: the epoch it fires at and the overfitting point (a checkpoint)."""
    epochs = [h["epoch"] for h in history]
    train = [h["train_loss"] for h in history]
    val = [h["val_loss"] for h in history]
    at_ckpt = [h for h in history if h["epoch"] in set(checkpoints)]
    ck_epochs = [h["epoch"] for h in at_ckpt]
    gaps = [h["val_loss"] - h["train_loss"] for h in at_ckpt]
    fired = {
        "gap-rise": gap_rise_rule(ck_epochs, gaps, cfg.rises),
        "gl": gl_rule(epochs, val, cfg.gl_alpha),
        "pq": pq_rule(epochs, train, val, cfg.pq_alpha, cfg.strip),
        "up": up_rule(epochs, val, cfg.strip, cfg.up_strips),
    }
    out = {}
    for name, epoch in fired.items():
        # The strategy's point is the checkpoint before the run of rises; the others, the
        # last checkpoint before the epoch at which they fire.
        point = (_checkpoint_before(epoch, ck_epochs, cfg.rises) if name == "gap-rise"
                 else _checkpoint_before(epoch, ck_epochs))
        out[name] = {"fires_at_epoch": epoch, "overfitting_point": point}
    return out


def group_val_loss(entry: Mapping[str, Any], loss_keys: Sequence[str]) -> float:
    """A group's own validation loss: the sum of its modules' val losses."""
    module = entry["val_module_loss"]
    return float(sum(module[k] for k in loss_keys))


def sweet_spot_score(entry: Mapping[str, Any], loss_keys: Sequence[str]) -> float:
    """The strategy's score (lower is better): group val loss + 0.2 * |gap| - 0.1 * stability."""
    gap = abs(entry["val_loss"] - entry["train_loss"])
    return group_val_loss(entry, loss_keys) + 0.2 * gap - 0.1 * entry["stability_score"]


def find_sweet_spots(
    history: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[int],
    group_losses: Mapping[str, Sequence[str]],
    independent: Sequence[str] = (),
    cfg: OverfitConfig = OverfitConfig(),
) -> dict[str, Any]:
    """The overfitting point per criterion and the sweet spot of every group, with reasons."""
    if not checkpoints:
        raise ValueError("no checkpoints to choose sweet spots from")
    points = overfitting_points(history, checkpoints, cfg)
    limit = points[cfg.decide_by]["overfitting_point"]
    by_epoch = {h["epoch"]: h for h in history}
    groups = {}
    for group, keys in group_losses.items():
        free = group in independent or limit is None
        allowed = [c for c in checkpoints if c in by_epoch and (free or c <= limit)]
        if not allowed:  # overfitting before the first checkpoint: keep the first one
            allowed = [min(checkpoints)]
        scores = {c: sweet_spot_score(by_epoch[c], keys) for c in allowed}
        best = min(scores, key=lambda c: (scores[c], c))
        scope = ("any checkpoint (independent module)" if group in independent
                 else "every checkpoint (no overfitting detected)" if limit is None
                 else f"checkpoints up to the overfitting point, epoch {limit}")
        groups[group] = {
            "epoch": best, "score": scores[best],
            "group_val_loss": group_val_loss(by_epoch[best], keys), "loss_keys": list(keys),
            "candidates": {str(c): s for c, s in scores.items()},
            "reason": (f"epoch {best} has the lowest score {scores[best]:.4f} (own val loss "
                       f"{group_val_loss(by_epoch[best], keys):.4f} + 0.2 x gap - 0.1 x "
                       f"stability) among {scope}"),
        }
    ckpt = [by_epoch[c] for c in checkpoints if c in by_epoch]
    return {
        "decided_by": cfg.decide_by,
        "overfitting_point": limit,
        "criteria": points,
        "settings": {"rises": cfg.rises, "gl_alpha": cfg.gl_alpha, "pq_alpha": cfg.pq_alpha,
                     "strip": cfg.strip, "up_strips": cfg.up_strips},
        "sweet_spots": groups,
        "curves": {
            "epochs": [h["epoch"] for h in history],
            "train_loss": [h["train_loss"] for h in history],
            "val_loss": [h["val_loss"] for h in history],
            "checkpoints": [h["epoch"] for h in ckpt],
            "gap_at_checkpoints": [h["val_loss"] - h["train_loss"] for h in ckpt],
            "group_val_loss": {g: [group_val_loss(h, k) for h in ckpt]
                               for g, k in group_losses.items()},
        },
    }
