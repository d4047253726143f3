"""Multi-criterion LR selection: pure functions over the sweep's epoch histories.

Criteria and weights are the strategy's: validation loss 0.4, stability 0.2,
efficiency 0.2, overfitting 0.2. The strategy scores them with formulas in different
units (1 / (1 + val loss), min(1, absolute loss drop), ...), so a criterion's
weight depends on the loss scale. The default, ``"normalized"``, makes every
criterion scale-free: each candidate's raw figure is min-max normalized across
the candidates to [0, 1] (1 = best of them; all equal -> 1), then weighted.
``"strategy"`` keeps the strategy's literal formulas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

CRITERIA = ("val_loss", "stability", "efficiency", "overfit")


@dataclass(frozen=True)
class SelectionWeights:
    val_loss: float = 0.4
    stability: float = 0.2
    efficiency: float = 0.2
    overfit: float = 0.2

    def __post_init__(self) -> None:
        for name in CRITERIA:
            if getattr(self, name) < 0:
                raise ValueError(f"weight {name} must be >= 0, got {getattr(self, name)!r}")
        if sum(getattr(self, n) for n in CRITERIA) <= 0:
            raise ValueError("at least one selection weight must be > 0")


def final_evaluation(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The strategy's final_evaluation of one LR's epochs, plus a scale-free improvement.

    overfit_gap is val loss - train loss at the last epoch (positive = overfitting;
    the strategy's sign is the opposite); convergence_rate is the mean absolute change of
    the train loss per epoch, as the strategy.
    """
    def num(v: Any) -> float:  # None stands for a non-finite value in stored JSON
        return math.nan if v is None else float(v)

    train = [num(h["train_loss"]) for h in history]
    val = [num(h["val_loss"]) for h in history]
    improvement = train[0] - train[-1]
    return {
        "epochs": len(history),
        "avg_val_loss": sum(val[-3:]) / len(val[-3:]),
        "overfit_gap": val[-1] - train[-1],
        "total_improvement": improvement,
        "relative_improvement": improvement / train[0] if train[0] else 0.0,
        "stability_overall": sum(num(h["stability_score"]) for h in history) / len(history),
        "convergence_rate": (sum(abs(a - b) for a, b in pairwise(train))
                             / max(1, len(train) - 1)),
    }


def _raw_goodness(ev: Mapping[str, float]) -> dict[str, float]:
    """Per criterion, a figure where larger is better."""
    return {
        "val_loss": -ev["avg_val_loss"],
        "stability": ev["stability_overall"],
        "efficiency": ev["relative_improvement"],
        "overfit": -max(0.0, ev["overfit_gap"]),
    }


def _strategy_scores(ev: Mapping[str, float]) -> dict[str, float]:
    return {
        "val_loss": 1.0 / (1.0 + ev["avg_val_loss"]),
        "stability": ev["stability_overall"],
        "efficiency": min(1.0, ev["total_improvement"]),
        "overfit": 1.0 / (1.0 + abs(ev["overfit_gap"])),
    }


def criterion_scores(
    evaluations: Mapping[float, Mapping[str, float]], method: str = "normalized"
) -> dict[float, dict[str, float]]:
    """LR -> criterion -> score in [0, 1] (the strategy's formulas may leave that range)."""
    if method == "strategy":
        return {lr: _strategy_scores(ev) for lr, ev in evaluations.items()}
    if method != "normalized":
        raise ValueError(f"selection method must be 'normalized' or 'strategy', got {method!r}")
    raw = {lr: _raw_goodness(ev) for lr, ev in evaluations.items()}
    out: dict[float, dict[str, float]] = {lr: {} for lr in raw}
    for c in CRITERIA:
        values = [r[c] for r in raw.values() if math.isfinite(r[c])]
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        for lr, r in raw.items():
            if not math.isfinite(r[c]):
                out[lr][c] = 0.0
            else:
                out[lr][c] = 1.0 if hi == lo else (r[c] - lo) / (hi - lo)
    return out


def _ordinal(n: int) -> str:
    return {1: "best", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _reason(lr: float, ev: Mapping[str, float], scores: Mapping[float, Mapping[str, float]],
            totals: Mapping[float, float]) -> str:
    def rank(c: str) -> int:
        return 1 + sum(1 for other in scores if scores[other][c] > scores[lr][c])
    overall = 1 + sum(1 for other in totals if totals[other] > totals[lr])
    return (f"LR {lr:g}: score {totals[lr]:.3f} ({_ordinal(overall)} of {len(totals)}); "
            f"val loss over the last epochs {ev['avg_val_loss']:.4f} ({_ordinal(rank('val_loss'))}), "
            f"stability {ev['stability_overall']:.3f} ({_ordinal(rank('stability'))}), "
            f"train loss improved {ev['relative_improvement']:.1%} ({_ordinal(rank('efficiency'))}), "
            f"overfit gap {ev['overfit_gap']:+.4f} ({_ordinal(rank('overfit'))})")


def select_lr(
    evaluations: Mapping[float, Mapping[str, float]],
    weights: SelectionWeights = SelectionWeights(),
    method: str = "normalized",
    excluded: Mapping[float, str] | None = None,
) -> dict[str, Any]:
    """Score every candidate LR and pick the best; the report says why in words.

    ``excluded``: LRs that may not be selected (pruned or failed) and why.
    """
    if not evaluations:
        raise ValueError("no LR finished its sweep: nothing to select (every trial was pruned "
                         "or failed; see lr_sweep/)")
    scores = criterion_scores(evaluations, method)
    w = asdict(weights)
    totals = {lr: sum(w[c] * s[c] for c, s in [(c, scores[lr]) for c in CRITERIA])
              for lr in scores}
    best = min(totals, key=lambda lr: (-totals[lr], evaluations[lr]["avg_val_loss"], lr))
    reasons = {lr: _reason(lr, evaluations[lr], scores, totals) for lr in evaluations}
    strengths = [c.replace("_", " ") for c in CRITERIA if scores[best][c] >= 0.999]
    why = (f"LR {best:g} has the highest weighted score ({totals[best]:.3f}, {method} criteria)"
           + (f"; it is best on: {', '.join(strengths)}" if strengths else ""))
    return {
        "selected_lr": best,
        "selection_score": totals[best],
        "method": method,
        "all_scores": {str(lr): totals[lr] for lr in totals},
        "detailed_analysis": {str(lr): {"total_score": totals[lr],
                                        **{f"{c}_score": scores[lr][c] for c in CRITERIA},
                                        "raw_metrics": dict(evaluations[lr])}
                              for lr in evaluations},
        "selection_criteria": {f"{c}_weight": w[c] for c in CRITERIA},
        "selection_reason": why,
        "reasons": {str(lr): r for lr, r in reasons.items()},
        "excluded": {str(lr): r for lr, r in (excluded or {}).items()},
        "timestamp": datetime.now(UTC).isoformat(),
    }


def grid_edge(selected: float, tried: Sequence[float]) -> str | None:
    """``"upper"`` when ``selected`` is the largest LR the sweep tried, ``"lower"`` when it
    is the smallest, None when tried LRs lie on both sides (the grid brackets it)."""
    if selected >= max(tried):
        return "upper"
    if selected <= min(tried):
        return "lower"
    return None


def next_lr_beyond(tried: Sequence[float], edge: str) -> float:
    """The next LR past the ``edge`` of ``tried``: one geometric step, the ratio of the two
    outermost LRs on that side (x2 with a single LR), rounded to 3 significant digits."""
    if edge not in ("upper", "lower"):
        raise ValueError(f"edge must be 'upper' or 'lower', got {edge!r}")
    pts = sorted(tried)
    # x2 past a lone LR; at least x1.5, since two near-equal LRs would step nowhere.
    ratio = 2.0 if len(pts) < 2 else max(pts[-1] / pts[-2] if edge == "upper" else pts[1] / pts[0],
                                         1.5)
    value = pts[-1] * ratio if edge == "upper" else pts[0] / ratio
    return float(f"{value:.3g}")


def grid_verdict(selected: float, tried: Sequence[float], completed: Sequence[float],
                 extended: Sequence[float], limit: int) -> dict[str, Any]:
    """Where the selected LR sits in the grid, in figures and in one sentence."""
    edge = grid_edge(selected, tried)
    below = sorted(lr for lr in tried if lr < selected)
    above = sorted(lr for lr in tried if lr > selected)
    side = {"upper": "largest", "lower": "smallest"}.get(edge or "", "")
    if edge is None:
        pruned_bound = [lr for lr in (below[-1], above[0]) if lr not in completed]
        message = (f"LR {selected:g} is interior: the grid tried {below[-1]:g} below and "
                   f"{above[0]:g} above it"
                   + (f" ({', '.join(f'{lr:g}' for lr in pruned_bound)} pruned)" if pruned_bound
                      else ""))
    else:
        direction = "above" if edge == "upper" else "below"
        message = (f"LR {selected:g} is the {side} LR tried: the optimum may lie {direction} it; "
                   f"still on the edge after {len(extended)} extension point(s) "
                   f"(--extend-grid {limit})")
    return {"edge": edge, "interior": edge is None, "tried": sorted(tried),
            "completed": sorted(completed), "extended": list(extended),
            "extend_limit": limit, "message": message}
