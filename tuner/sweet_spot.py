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

Noise never fires a criterion: with ``n`` val rows, a rise counts only when it is more than
``floor_rows`` rows' worth: ``floor_rows / n`` of an error rate (accuracy, F1: fewer rows
changing their answer is within what a resample of val moves), ``floor_rows / n`` of the
value for a loss (what ``floor_rows`` rows could add by doubling their loss). And the point
is never before the ``min_candidates``-th checkpoint, so every group keeps that many
candidate epochs (on a small or flat val curve GL had fired at once and left each group one).

The criteria watch the run's monitor (``tuner.monitor``): the val loss, or the error
(1 - value) of an accuracy or F1. ``gap-rise`` and PQ's training progress read the losses,
the only quantity measured on train every epoch.

Per-group sweet spot: the best checkpoint up to the overfitting point (independent groups:
any checkpoint), by one of two methods:
- ``splice``: the reference model (the best single checkpoint) with only that group's
  tensors taken from checkpoint e, evaluated on val; the best e under the monitor. This
  works for any model: it measures what the crossover will assemble.
- ``module-loss``: the strategy's score, group val loss + 0.2 * gap - 0.1 * stability, with
  the group's own validation loss (its modules' losses, where the model declares them).
A group without its own losses is scored by splicing whatever the method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model.setting import setting

from .monitor import VAL_LOSS, Monitor

CRITERIA = ("gap-rise", "gl", "pq", "up")
METHODS = ("splice", "module-loss")


@dataclass(frozen=True)
class OverfitConfig:
    # GL decides by default: the strategy's gap rule also fires while val loss still improves
    # (the gap grows from negative, dropout-inflated train loss, toward zero); on the
    # default run it fired at epoch 24 while val loss kept falling to epoch 57.
    decide_by: str = setting(
        "gl", flag="--overfit-criterion", group="training", choices=CRITERIA,
        renamed_values={"seed": "gap-rise"},
        help="which overfitting criterion bounds the sweet spots (all are reported; 'seed' is "
             "the old name of 'gap-rise')")
    rises: int = 3
    gl_alpha: float = 5.0
    pq_alpha: float = 2.0
    strip: int = 5
    up_strips: int = 3
    # A rise smaller than this many val rows' worth never counts (module docstring).
    floor_rows: int = 3
    # The overfitting point is never before this checkpoint (1-based), so every group keeps
    # at least this many candidate epochs.
    min_candidates: int = 2

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
        if self.floor_rows < 0:
            raise ValueError(f"floor_rows must be >= 0, got {self.floor_rows!r}")
        if self.min_candidates < 1:
            raise ValueError(f"min_candidates must be >= 1, got {self.min_candidates!r}")


def noise_floor(value: float, rows: int | None, floor_rows: int, rate: bool) -> float:
    """The smallest rise of ``value`` that counts with ``rows`` val rows: ``floor_rows /
    rows`` of an error rate (``rate``), that share of the value itself for a loss; 0 when the
    rows are unknown."""
    if not rows or floor_rows <= 0:
        return 0.0
    share = floor_rows / rows
    return share if rate else share * abs(value)


def gap_rise_rule(epochs: Sequence[int], gaps: Sequence[float], rises: int = 3,
                  floors: Sequence[float] | None = None) -> int | None:
    """Epoch at which the gap has risen ``rises`` checkpoints in a row (None if never); a
    rise counts when it is more than ``floors[i]`` (default 0)."""
    run = 0
    for i in range(1, len(gaps)):
        floor = floors[i] if floors is not None else 0.0
        run = run + 1 if gaps[i] > gaps[i - 1] + floor else 0
        if run >= rises:
            return epochs[i]
    return None


def gl_rule(epochs: Sequence[int], val: Sequence[float], alpha: float,
            floor: Callable[[float], float] = lambda best: 0.0) -> int | None:
    """The first epoch whose GL exceeds ``alpha`` by a rise over the best so far of more
    than ``floor(best)``."""
    best = math.inf
    for e, v in zip(epochs, val, strict=True):
        best = min(best, v)
        if v - best > floor(best) and _generalization_loss(v, best) > alpha:
            return e
    return None


def _generalization_loss(v: float, best: float) -> float:
    """Prechelt's GL in percent; an error that rises from a best of 0 is infinitely worse."""
    if best > 0:
        return 100.0 * (v / best - 1.0)
    return math.inf if v > best else 0.0


def pq_rule(epochs: Sequence[int], train: Sequence[float], val: Sequence[float], alpha: float,
            k: int, floor: Callable[[float], float] = lambda best: 0.0) -> int | None:
    best = math.inf
    for i, (e, v) in enumerate(zip(epochs, val, strict=True)):
        best = min(best, v)
        if (i + 1) % k:
            continue
        strip = train[i - k + 1: i + 1]
        progress = 1000.0 * (sum(strip) / (k * min(strip)) - 1.0)
        gl = _generalization_loss(v, best) if v - best > floor(best) else 0.0
        # Training that has stalled (P_k = 0) while val is above its best: PQ is infinite.
        if gl > 0 and (progress <= 0 or gl / progress > alpha):
            return e
    return None


def up_rule(epochs: Sequence[int], val: Sequence[float], k: int, s: int,
            floor: Callable[[float], float] = lambda before: 0.0) -> int | None:
    ends = [(epochs[i], val[i]) for i in range(k - 1, len(val), k)]
    run = 0
    for j in range(1, len(ends)):
        run = run + 1 if ends[j][1] > ends[j - 1][1] + floor(ends[j - 1][1]) else 0
        if run >= s:
            return ends[j][0]
    return None


def _checkpoint_before(fired: int | None, checkpoints: Sequence[int], rises: int = 0,
                       min_candidates: int = 1) -> int | None:
    """The last checkpoint before ``fired`` (``rises`` checkpoints back for gap-rise); the
    first checkpoint when it fires before any (overfitting before the first checkpoint is
    still overfitting, not "never"); never before the ``min_candidates``-th checkpoint."""
    if fired is None:
        return None
    earlier = [c for c in checkpoints if c < fired]
    if rises and len(earlier) >= rises:
        point = earlier[-rises]
    else:
        point = earlier[-1] if earlier else (min(checkpoints) if checkpoints else None)
    ordered = sorted(checkpoints)
    if point is not None and ordered:
        point = max(point, ordered[min(min_candidates, len(ordered)) - 1])
    return point


def overfitting_points(history: Sequence[Mapping[str, Any]], checkpoints: Sequence[int],
                       cfg: OverfitConfig = OverfitConfig(), monitor: Monitor = VAL_LOSS,
                       primary: str = "", val_rows: int | None = None,
                       ) -> dict[str, dict[str, Any]]:
    """Per criterion: the epoch it fires at and the overfitting point (a checkpoint).

    GL, PQ and UP watch the monitor's error (``Monitor.error``); gap-rise and PQ's training
    progress read the train and val losses. ``val_rows``: how many val rows the reports
    were measured on, for the noise floor (None: no floor)."""
    rate = monitor.accuracy_like

    def floor(value: float) -> float:
        return noise_floor(value, val_rows, cfg.floor_rows, rate)

    epochs = [h["epoch"] for h in history]
    train = [h["train_loss"] for h in history]
    error = [monitor.error(h, primary) for h in history]
    at_ckpt = [h for h in history if h["epoch"] in set(checkpoints)]
    ck_epochs = [h["epoch"] for h in at_ckpt]
    gaps = [h["val_loss"] - h["train_loss"] for h in at_ckpt]
    fired = {
        "gap-rise": gap_rise_rule(ck_epochs, gaps, cfg.rises,
                                  [noise_floor(h["val_loss"], val_rows, cfg.floor_rows, False)
                                   for h in at_ckpt]),
        "gl": gl_rule(epochs, error, cfg.gl_alpha, floor),
        "pq": pq_rule(epochs, train, error, cfg.pq_alpha, cfg.strip, floor),
        "up": up_rule(epochs, error, cfg.strip, cfg.up_strips, floor),
    }
    out = {}
    for name, epoch in fired.items():
        # The strategy's point is the checkpoint before the run of rises; the others, the
        # last checkpoint before the epoch at which they fire.
        point = _checkpoint_before(epoch, ck_epochs, cfg.rises if name == "gap-rise" else 0,
                                   cfg.min_candidates)
        out[name] = {"fires_at_epoch": epoch, "overfitting_point": point,
                     "watches": "val - train loss gap" if name == "gap-rise"
                     else f"the error of {monitor.name}"}
    return out


def group_val_loss(entry: Mapping[str, Any], loss_keys: Sequence[str]) -> float:
    """A group's own validation loss: the sum of its modules' val losses."""
    module = entry["val_module_loss"]
    return float(sum(module[k] for k in loss_keys))


def sweet_spot_score(entry: Mapping[str, Any], loss_keys: Sequence[str]) -> float:
    """The strategy's score (lower is better): group val loss + 0.2 * |gap| - 0.1 * stability."""
    gap = abs(entry["val_loss"] - entry["train_loss"])
    return group_val_loss(entry, loss_keys) + 0.2 * gap - 0.1 * entry["stability_score"]


def _module_loss_spot(by_epoch: Mapping[int, Mapping[str, Any]], allowed: Sequence[int],
                      keys: Sequence[str], scope: str) -> dict[str, Any]:
    scores = {c: sweet_spot_score(by_epoch[c], keys) for c in allowed}
    best = min(scores, key=lambda c: (scores[c], c))
    own = group_val_loss(by_epoch[best], keys)
    return {"epoch": best, "method": "module-loss", "score": scores[best],
            "group_val_loss": own, "loss_keys": list(keys),
            "candidates": {str(c): s for c, s in scores.items()},
            "reason": (f"epoch {best} has the lowest score {scores[best]:.4f} (own val loss "
                       f"{own:.4f} + 0.2 x gap - 0.1 x stability) among {scope}")}


def _spliced_spot(spliced: Mapping[int, Mapping[str, Any]], allowed: Sequence[int],
                  monitor: Monitor, primary: str, reference: int, scope: str) -> dict[str, Any]:
    items = [(c, spliced[c]) for c in allowed if c in spliced]
    if not items:
        raise ValueError(f"no spliced evaluation among checkpoints {list(allowed)}")
    best = monitor.best_in_order(items, primary)
    value = monitor.value(spliced[best], primary)
    return {"epoch": best, "method": "splice", "score": value,
            "candidates": {str(c): monitor.value(m, primary) for c, m in items},
            "reason": (f"epoch {best}: {monitor.name} {value:.4f}, the best of the reference "
                       f"(epoch {reference}) with only this group's weights from each of {scope}")}


def find_sweet_spots(
    history: Sequence[Mapping[str, Any]],
    checkpoints: Sequence[int],
    group_losses: Mapping[str, Sequence[str]],
    independent: Sequence[str] = (),
    cfg: OverfitConfig = OverfitConfig(),
    monitor: Monitor = VAL_LOSS,
    primary: str = "",
    spliced: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
    method: str = "module-loss",
    reference: int | None = None,
    groups: Sequence[str] | None = None,
    val_rows: int | None = None,
) -> dict[str, Any]:
    """The overfitting point per criterion and the sweet spot of every group, with reasons.

    ``group_losses``: each group's own loss terms (groups missing from it have none);
    ``spliced``: group -> checkpoint epoch -> val metrics of the reference model (epoch
    ``reference``) with only that group taken from the checkpoint; ``method``: which
    evidence decides for groups that have both (``METHODS``); ``groups``: every group
    (default: those of ``group_losses`` and ``spliced``); ``val_rows``: the rows the reports
    were measured on, for the criteria's noise floor."""
    if not checkpoints:
        raise ValueError("no checkpoints to choose sweet spots from")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    points = overfitting_points(history, checkpoints, cfg, monitor, primary, val_rows)
    limit = points[cfg.decide_by]["overfitting_point"]
    by_epoch = {h["epoch"]: h for h in history}
    names = list(groups or dict.fromkeys([*group_losses, *(spliced or {})]))
    spots = {}
    for group in names:
        free = group in independent or limit is None
        allowed = [c for c in checkpoints if c in by_epoch and (free or c <= limit)]
        if not allowed:  # overfitting before the first checkpoint: keep the first one
            allowed = [min(checkpoints)]
        scope = ("any checkpoint (independent module)" if group in independent
                 else "every checkpoint (no overfitting detected)" if limit is None
                 else f"the checkpoints up to the overfitting point, epoch {limit}")
        keys = group_losses.get(group)
        use_splice = spliced is not None and group in spliced and (method == "splice" or not keys)
        if use_splice:
            spots[group] = _spliced_spot(spliced[group], allowed, monitor, primary,
                                         reference if reference is not None else allowed[0], scope)
        elif keys:
            spots[group] = _module_loss_spot(by_epoch, allowed, keys, scope)
        else:
            raise ValueError(f"group {group!r} has neither its own losses nor spliced evaluations")
    ckpt = [by_epoch[c] for c in checkpoints if c in by_epoch]
    return {
        "decided_by": cfg.decide_by,
        "monitor": monitor.name,
        "method": method,
        "reference_epoch": reference,
        "overfitting_point": limit,
        "criteria": points,
        "settings": {"rises": cfg.rises, "gl_alpha": cfg.gl_alpha, "pq_alpha": cfg.pq_alpha,
                     "strip": cfg.strip, "up_strips": cfg.up_strips,
                     "min_delta": monitor.min_delta, "floor_rows": cfg.floor_rows,
                     "min_candidates": cfg.min_candidates, "val_rows": val_rows},
        "sweet_spots": spots,
        "curves": {
            "epochs": [h["epoch"] for h in history],
            "train_loss": [h["train_loss"] for h in history],
            "val_loss": [h["val_loss"] for h in history],
            "val_monitor": [monitor.value(h, primary) for h in history],
            "checkpoints": [h["epoch"] for h in ckpt],
            "gap_at_checkpoints": [h["val_loss"] - h["train_loss"] for h in ckpt],
            "group_val_loss": {g: [group_val_loss(h, k) for h in ckpt]
                               for g, k in group_losses.items() if k},
            "spliced": {g: {str(e): monitor.value(m, primary) for e, m in sorted(per.items())}
                        for g, per in (spliced or {}).items()},
        },
    }
