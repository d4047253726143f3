"""The run's monitor: what "better on val" means for every decision of phases 3 and 4.

``--monitor`` is Hugging Face Trainer's ``metric_for_best_model`` and Lightning's
``monitor``: one quantity, with its direction implied by its name, decides the overfitting
point (on its error), the sweet spots, the best single checkpoint, the crossover objective,
the greedy soup, the variant ensemble's centre and the final model. Ties are broken by the
val loss. Phase 1 (pruning, LR selection) keeps the strategy's own criteria.

Names: ``val_loss`` (the fused loss, summed over tasks), ``val_acc`` and ``val_macro_f1``
(the primary task), or ``TASK:METRIC`` for any task (``accuracy``, ``macro_f1`` for a
single-label task, ``accuracy``/``micro_f1`` for a multi-label task, ``mse`` for
regression, ``loss`` for the task's own loss).

Everything here is pure: a monitor reads the metric dicts ``model.training.evaluate``
returns (``loss``, ``task_metrics``), epoch reports (``val_loss``, ``val_task_metrics``) and
test-table rows (the same ``val_`` keys).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model.tasks import TaskSpec

PRIMARY_NAMES = ("val_loss", "val_acc", "val_macro_f1")
_METRICS = {"single": ("accuracy", "macro_f1", "loss"), "multi": ("accuracy", "micro_f1", "loss"),
            "regression": ("mse", "loss")}
_LOWER_IS_BETTER = ("loss", "mse")
_KNOWN = ("accuracy", "macro_f1", "micro_f1", "mse", "loss")


@dataclass(frozen=True)
class Monitor:
    """``name``: what is compared; ``min_delta``: the smallest change that counts as an
    improvement when checkpoints are scanned in epoch order (a later checkpoint must beat
    the best earlier one by more than this to replace it, Lightning's rule)."""

    name: str = "val_loss"
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"monitor must be a name, got {self.name!r}")
        if self.name not in PRIMARY_NAMES and ":" not in self.name:
            raise ValueError(f"monitor must be one of {PRIMARY_NAMES} or TASK:METRIC, got "
                             f"{self.name!r}")
        if ":" in self.name and not all(self.name.split(":", 1)):
            raise ValueError(f"monitor TASK:METRIC needs both parts, got {self.name!r}")
        if ":" in self.name and self.name.split(":", 1)[1] not in _KNOWN:
            raise ValueError(f"monitor TASK:METRIC takes a metric of {_KNOWN}, got {self.name!r}")
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, int | float):
            raise ValueError(f"min_delta must be a number, got {self.min_delta!r}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be finite and >= 0, got {self.min_delta!r}")

    # -- what it reads
    @property
    def metric(self) -> str:
        """The metric's name inside a task's metrics (``loss`` for the fused loss)."""
        if self.name == "val_loss":
            return "loss"
        if self.name == "val_acc":
            return "accuracy"
        if self.name == "val_macro_f1":
            return "macro_f1"
        return self.name.split(":", 1)[1]

    @property
    def task(self) -> str | None:
        """The task it reads; None for the fused loss or the primary task."""
        return self.name.split(":", 1)[0] if ":" in self.name else None

    @property
    def direction(self) -> str:
        """"minimize" or "maximize", as Optuna names them."""
        return "minimize" if self.metric in _LOWER_IS_BETTER else "maximize"

    @property
    def accuracy_like(self) -> bool:
        return self.direction == "maximize"

    def check(self, tasks: Sequence[TaskSpec]) -> None:
        """Raise ValueError when the data cannot give this monitor (before anything runs)."""
        names = {t.name: t for t in tasks}
        if self.name == "val_loss":
            return
        task = names.get(self.task) if self.task else tasks[0]
        if task is None:
            raise ValueError(f"--monitor {self.name}: the data has no task {self.task!r} "
                             f"(its tasks: {', '.join(names)})")
        allowed = _METRICS[task.kind]
        if self.metric not in allowed:
            raise ValueError(f"--monitor {self.name}: task {task.name!r} is {task.kind}, which "
                             f"gives {', '.join(allowed)}, not {self.metric}")

    def value(self, metrics: Mapping[str, Any], primary: str) -> float:
        """The monitored value in ``metrics`` (an evaluate() dict, an epoch report or a
        test-table row); ``primary``: the name of the first task."""
        m = metrics
        loss, per_task, task_loss = _view(m)
        if self.name == "val_loss":
            return float(loss)
        if self.name == "val_acc":  # every metric dict carries the primary task's accuracy
            acc = m.get("val_acc", m.get("acc"))
            return float("nan") if acc is None else float(acc)
        task = self.task or primary
        found = (task_loss if self.metric == "loss" else per_task.get(task, {})).get(
            task if self.metric == "loss" else self.metric)
        if found is None:
            raise ValueError(f"monitor {self.name}: the metrics of task {task!r} have no "
                             f"{self.metric}")
        return float(found)

    def signed(self, metrics: Mapping[str, Any], primary: str) -> float:
        """The value with lower = better (a maximized metric negated; NaN is worst)."""
        v = self.value(metrics, primary)
        if not math.isfinite(v):
            return math.inf
        return v if self.direction == "minimize" else -v

    def key(self, metrics: Mapping[str, Any], primary: str) -> tuple[float, float]:
        """Sort key, lower is better: the monitored value, ties broken by the val loss."""
        return (self.signed(metrics, primary), float(_view(metrics)[0]))

    def error(self, metrics: Mapping[str, Any], primary: str) -> float:
        """What the overfitting criteria watch rise: the value itself for a loss or MSE,
        1 - value for an accuracy or an F1."""
        v = self.value(metrics, primary)
        return v if self.direction == "minimize" else 1.0 - v

    def best_in_order(self, items: Sequence[tuple[int, Mapping[str, Any]]], primary: str) -> int:
        """The epoch of the best of ``items`` (epoch, metrics) scanned in epoch order: a
        later epoch replaces the best so far only if it improves the value by more than
        ``min_delta``, or equals it and has a lower val loss (min_delta 0)."""
        if not items:
            raise ValueError("no checkpoints to choose from")
        ordered = sorted(items, key=lambda x: x[0])
        best_epoch, best = ordered[0][0], self.key(ordered[0][1], primary)
        for epoch, m in ordered[1:]:
            k = self.key(m, primary)
            if k[0] < best[0] - self.min_delta or (self.min_delta == 0 and k < best):
                best_epoch, best = epoch, k
        return best_epoch

    def describe(self) -> str:
        """The monitor in words, for tables and notes."""
        what = {"val_loss": "val loss (fused)", "val_acc": "val accuracy of the primary task",
                "val_macro_f1": "val macro-F1 of the primary task"}.get(
            self.name, f"val {self.metric} of task {self.task}")
        delta = f", min delta {self.min_delta:g}" if self.min_delta else ""
        return f"{self.name} ({what}, {'lower' if self.direction == 'minimize' else 'higher'} " \
               f"is better, ties by val loss{delta})"


VAL_LOSS = Monitor()  # the default monitor, for argument defaults


def _view(m: Mapping[str, Any]) -> tuple[float, Mapping[str, Mapping[str, float]], Mapping[str, float]]:
    """(fused loss, task -> metrics, task -> loss) of any of the three metric dict shapes."""
    if "val_loss" in m:
        return m["val_loss"], m.get("val_task_metrics") or {}, m.get("val_task_loss") or {}
    return m["loss"], m.get("task_metrics") or {}, m.get("task_loss") or {}


__all__ = ["PRIMARY_NAMES", "VAL_LOSS", "Monitor"]
