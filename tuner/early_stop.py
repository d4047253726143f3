"""When the long run may stop: its decisions are made, and more epochs would not change them.

The strategy's ``--epochs`` stays the maximum. After each checkpoint, the long run stops
once, over its checkpoints so far:

- the run's monitor (``--monitor``, ``--min-delta``) has not improved for ``patience``
  checkpoints (Lightning's ``EarlyStopping`` rule, counted in checkpoints because only
  checkpoints can be chosen by phases 3 and 4);
- every group the caller passes in ``group_losses`` is past its own best val loss by
  ``patience`` checkpoints too, where only a drop of more than ``GROUP_MIN_DELTA`` (1%) of
  its best counts as an improvement (its scale is its own: 0.04 for an easy multi-label task,
  1.3 for a 51-class one). The long run passes the independent groups with losses of their own
  (``GroupSpec.independent``: the reference model's advanced analyzers): phase 3 caps the
  other groups' sweet spots at the overfitting point, which the monitor's curve decides, so
  their own later bests could not be chosen, while an independent group's sweet spot is not
  capped, so the run waits until it can no longer move;
- at least ``min_checkpoints`` checkpoints exist, for the crossover and the soups.

The defaults (patience 3 checkpoints = 6 epochs, 4 checkpoints) come from the default run
before the stop existed (seeds 0 and 1, 60 epochs): the val loss was lowest at epoch 2-3,
every checkpoint a decision kept was at most epoch 6, and the independent groups' own val
losses were lowest by epoch 6; this rule stops those runs at epochs 12 and 10.

Peers stop on one curve (Lightning #4994, closed "won't fix"; Keras #21001, open); the
per-group condition is this module's. All of it is pure: the epoch reports in, a decision
out, so it is tested without training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model.groups import GroupSpec

from .monitor import Monitor

# A group's own val loss improves when it falls by more than this share of its best so far:
# on the default run an analyzer's loss crept down by 0.05% per checkpoint for 10
# checkpoints after its last real gain (1.7%), which would have kept the run going to 60.
GROUP_MIN_DELTA = 0.01


@dataclass(frozen=True)
class StopRule:
    """``patience``: checkpoints without improvement before the long run stops (0: never,
    the strategy's full run); ``min_checkpoints``: the fewest it stops with."""

    patience: int = 3
    min_checkpoints: int = 4

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 checkpoints, got {self.patience!r}")
        if self.min_checkpoints < 1:
            raise ValueError(f"min_checkpoints must be >= 1, got {self.min_checkpoints!r}")

    @property
    def enabled(self) -> bool:
        return self.patience > 0


def group_loss(metrics: Mapping[str, Any], modules: Sequence[str]) -> float:
    """A group's own val loss in an epoch report: the sum of its modules' val losses."""
    return float(sum(metrics["val_module_loss"][m] for m in modules))


def _since_best(values: Sequence[tuple[int, float]], min_delta: float,
                relative: float = 0.0) -> tuple[int, int]:
    """(best epoch, checkpoints after it) of (epoch, lower-is-better value) in epoch order:
    a later value replaces the best only when lower by more than ``min_delta`` plus
    ``relative`` x |best|."""
    best_epoch, best, after = values[0][0], values[0][1], 0
    for epoch, v in values[1:]:
        if v < best - min_delta - relative * abs(best):
            best_epoch, best, after = epoch, v, 0
        else:
            after += 1
    return best_epoch, after


def stop_decision(history: Sequence[Mapping[str, Any]], checkpoints: Sequence[int],
                  monitor: Monitor, primary: str, group_losses: Mapping[str, Sequence[str]],
                  rule: StopRule) -> dict[str, Any]:
    """Whether the long run stops after its last checkpoint, and the evidence.

    ``history``: the epoch reports so far; ``checkpoints``: their checkpoint epochs;
    ``group_losses``: group -> the modules whose losses are its own (groups without any
    are left out). Returns ``{"stop": bool, "reason": str, "monitor": {...}, "groups":
    {group: {"best_epoch", "checkpoints_since"}}}``.
    """
    by_epoch = {h["epoch"]: h for h in history}
    points = [e for e in sorted(checkpoints) if e in by_epoch]
    out: dict[str, Any] = {"stop": False, "checkpoints": len(points), "patience": rule.patience,
                           "min_checkpoints": rule.min_checkpoints, "groups": {}}
    if not points:
        out["reason"] = "no checkpoint yet"
        return out
    best, since = _since_best([(e, monitor.signed(by_epoch[e], primary)) for e in points],
                              monitor.min_delta)
    out["monitor"] = {"name": monitor.name, "best_epoch": best, "checkpoints_since": since}
    waiting = []
    # A loss monitor's min_delta is in loss units: the groups' own losses take it too.
    group_delta = monitor.min_delta if monitor.name == "val_loss" else 0.0
    for group, modules in group_losses.items():
        if not modules:
            continue
        g_best, g_since = _since_best([(e, group_loss(by_epoch[e], modules)) for e in points],
                                      group_delta, GROUP_MIN_DELTA)
        out["groups"][group] = {"best_epoch": g_best, "checkpoints_since": g_since}
        if g_since < rule.patience:
            waiting.append(f"{group} (best at epoch {g_best})")
    if not rule.enabled:
        out["reason"] = "patience 0: the full run"
    elif since < rule.patience:
        out["reason"] = (f"{monitor.name} improved {since} checkpoint(s) ago (epoch {best}), "
                         f"patience {rule.patience}")
    elif waiting:
        out["reason"] = (f"{monitor.name} stalled since epoch {best}, but these groups' own val "
                         f"losses improved within {rule.patience} checkpoints: "
                         f"{', '.join(waiting)}")
    elif len(points) < rule.min_checkpoints:
        out["reason"] = (f"{len(points)} checkpoint(s), fewer than the {rule.min_checkpoints} "
                         "the crossover and the soups need")
    else:
        out["stop"] = True
        groups = "; every group with its own losses too" if out["groups"] else ""
        out["reason"] = (f"{monitor.name} has not improved by more than {monitor.min_delta:g} "
                         f"for {since} checkpoints since epoch {best}{groups}")
    return out


def decide(history: list[dict], checkpoints: list[int], monitor: Monitor, primary: str,
           spec: GroupSpec, rule: StopRule) -> dict[str, Any]:
    """``stop_decision`` for a model's groups: the independent groups with losses of their
    own that the model reports each epoch wait too."""
    # Independent groups with losses of their own (by the modules the model reports each
    # epoch): their sweet spots are not capped by the overfitting point, which the monitor
    # decides, so the run waits for them too.
    reported = set(history[-1]["val_module_loss"]) if history else set()
    own = {g: mods for g, mods in spec.group_losses.items()
           if g in spec.independent and mods and set(mods) <= reported}
    return stop_decision(history, checkpoints, monitor, primary, own, rule)


def stop_evidence(decision: dict[str, Any], history: list[dict], max_epochs: int
                  ) -> dict[str, Any]:
    """Why the run ended where it did, and what stopping saved (the mean epoch's seconds
    times the epochs not trained: an estimate, their time was never spent)."""
    last = history[-1]["epoch"]
    seconds = [h["seconds"] for h in history if "seconds" in h]
    mean = sum(seconds) / len(seconds) if seconds else 0.0
    return {**decision, "stopped_early": bool(decision["stop"]) and last < max_epochs,
            "last_epoch": last,
            "max_epochs": max_epochs, "epochs_saved": max_epochs - last,
            "seconds_saved_estimate": mean * (max_epochs - last),
            # The cosine schedule keeps the maximum's horizon, so the epochs trained are
            # exactly the full run's first ones; the stop only leaves out the rest.
            "lr_schedule": f"cosine over the maximum {max_epochs} epochs; stopped at epoch "
                           f"{last}, where the LR is "
                           f"{0.5 * (1 + math.cos(math.pi * last / max_epochs)):.3f} x the peak"}


__all__ = ["GROUP_MIN_DELTA", "StopRule", "decide", "group_loss", "stop_decision", "stop_evidence"]
