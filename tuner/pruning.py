"""Pruning that works on a five-point LR grid.

Optuna's MedianPruner never prunes here with its defaults (n_startup_trials=5 counts
completed trials, and the grid has five). This pruner prunes
- at once: a non-finite val loss, or one above ``divergence_factor`` x the trial's
  val loss before training (a diverging LR);
- from ``warmup_epochs`` on, before the last epoch: a val loss more than ``margin``
  (relative) above the best val loss any finished trial had at the same epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

INITIAL_ATTR = "initial_val_loss"
# Set on a trial that runs its full epochs unless it diverges: an extension point below the
# grid's small edge. A smaller LR is always behind early, so being behind at epoch 2 says
# nothing about where it ends; pruning it would call its neighbour "interior" on no evidence.
FULL_EPOCHS_ATTR = "full_epochs"


@dataclass(frozen=True)
class PruneRule:
    divergence_factor: float = 1.5
    margin: float = 0.1
    warmup_epochs: int = 2
    last_epoch: int = 5

    def __post_init__(self) -> None:
        if self.divergence_factor <= 1.0:
            raise ValueError(f"divergence_factor must be > 1, got {self.divergence_factor!r}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin!r}")
        if self.warmup_epochs < 1:
            raise ValueError(f"warmup_epochs must be >= 1, got {self.warmup_epochs!r}")


def prune_reason(
    value: float, epoch: int, initial: float | None, others_at_epoch: Iterable[float], rule: PruneRule
) -> str | None:
    """Why a trial should stop after ``epoch`` with val loss ``value``; None to go on."""
    if not math.isfinite(value):
        return f"val loss {value} is not finite at epoch {epoch}: diverged"
    if initial is not None and math.isfinite(initial) and value > rule.divergence_factor * initial:
        return (f"val loss {value:.4g} at epoch {epoch} is above {rule.divergence_factor} x its "
                f"start {initial:.4g}: diverging")
    if epoch < rule.warmup_epochs or epoch >= rule.last_epoch:
        return None
    finite = [v for v in others_at_epoch if math.isfinite(v)]
    if finite and value > min(finite) * (1.0 + rule.margin):
        return (f"val loss {value:.4g} at epoch {epoch} is more than {rule.margin:.0%} above the "
                f"best finished trial's {min(finite):.4g} at that epoch")
    return None


class SweepPruner(optuna.pruners.BasePruner):
    """Optuna pruner applying :func:`prune_reason`; the trial stores ``reason(number)``
    as its ``pruned_reason`` user attr (a pruner may only read trials)."""

    def __init__(self, rule: PruneRule):
        self.rule = rule
        self._reasons: dict[int, str] = {}  # trial number -> why it was pruned

    def reason(self, number: int) -> str:
        """Why trial ``number`` was pruned in this process."""
        return self._reasons.get(number, "by the pruner")

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        epoch = trial.last_step
        if epoch is None:
            return False
        others = [t.intermediate_values[epoch]
                  for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if epoch in t.intermediate_values]
        if trial.user_attrs.get(FULL_EPOCHS_ATTR):
            others = []  # the divergence rules only
        reason = prune_reason(trial.intermediate_values[epoch], epoch,
                              trial.user_attrs.get(INITIAL_ATTR), others, self.rule)
        if reason is not None:
            self._reasons[trial.number] = reason
        return reason is not None
