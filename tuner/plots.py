"""The PNG plots beside final/report.md, drawn from what the phases wrote (nothing is
recomputed), with matplotlib's object API (no pyplot state, no display), written
atomically."""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from storage import Session, atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(size: tuple[float, float]) -> Figure:
    # Imported here: matplotlib costs every run_study.py start half a second, and only the
    # phases that draw need it.
    from matplotlib.figure import Figure

    return Figure(figsize=size)


PLOTS = ("lr_sweep.png", "learning_curves.png", "lr_schedule.png", "crossover_search.png",
         "test_table.png")


def save_plot(session: Session, name: str, fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(session.path("final", name), buf.getvalue())
    return name


def plot_lr_sweep(curves: Mapping[str, Any]) -> Figure:
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    for lr, losses in curves["val_losses"].items():
        ax.plot(range(1, len(losses) + 1), losses, marker="o", label=f"LR {lr}")
    ax.set(title="LR sweep: validation loss per epoch", xlabel="epoch", ylabel="val loss")
    ax.legend(fontsize=8)
    return fig


def plot_learning_curves(analysis: Mapping[str, Any]) -> Figure:
    """Train/val loss with each criterion's overfitting point; each group's own val loss
    at the checkpoints with its sweet spot marked."""
    c = analysis["curves"]
    fig = _figure((11, 4.5))
    left, right = fig.subplots(1, 2)
    left.plot(c["epochs"], c["train_loss"], label="train loss")
    left.plot(c["epochs"], c["val_loss"], label="val loss")
    styles = dict(zip(("gap-rise", "gl", "pq", "up"), (":", "--", "-.", (0, (1, 3))), strict=True))
    for name, crit in analysis["criteria"].items():
        if crit["overfitting_point"] is not None:
            width = 2.0 if name == analysis["decided_by"] else 1.0
            left.axvline(crit["overfitting_point"], color="red", lw=width,
                         ls=styles.get(name, "--"), label=f"overfitting point ({name})")
    left.set(title="Long run", xlabel="epoch", ylabel="fused loss")
    left.legend(fontsize=8)
    if analysis.get("method") == "splice" and c.get("spliced"):
        # Each group spliced into the reference: the monitor per checkpoint it was tried at.
        for group, per in c["spliced"].items():
            xs = sorted(int(e) for e in per)
            line, = right.plot(xs, [per[str(e)] for e in xs], marker=".", label=group)
            spot = analysis["sweet_spots"][group]["epoch"]
            right.plot([spot], [per[str(spot)]], marker="*", ms=14, color=line.get_color(), ls="none")
        right.set(title=f"Each group spliced into epoch {analysis.get('reference_epoch')} "
                        "(star: sweet spot)", xlabel="checkpoint epoch of the group",
                  ylabel=f"{analysis.get('monitor', 'val_loss')} on val")
    else:
        for group, losses in relative_group_losses(c).items():
            line, = right.plot(c["checkpoints"], losses, label=group)
            spot = analysis["sweet_spots"][group]["epoch"]
            right.plot([spot], [losses[c["checkpoints"].index(spot)]], marker="*", ms=14,
                       color=line.get_color(), ls="none")
        right.set(title="Each group's own val loss (star: sweet spot)",
                  xlabel="checkpoint epoch",
                  ylabel="group val loss / its value at the first checkpoint")
    right.legend(fontsize=7)
    return fig


def relative_group_losses(curves: Mapping[str, Any]) -> dict[str, list[float]]:
    """Each group's val loss over its first checkpoint's: the groups' losses differ in
    scale (a group sums its modules' losses), their shapes are what the plot compares."""
    return {g: [x / v[0] if v[0] else x for x in v] for g, v in curves["group_val_loss"].items()}


def plot_lr_schedule(history: Sequence[Mapping[str, Any]]) -> Figure:
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    groups = list(history[0]["lr"])
    for g in groups:
        ax.plot([h["epoch"] for h in history], [h["lr"][g] for h in history], label=g)
    ax.set(title="Learning rate at the start of each epoch", xlabel="epoch", ylabel="LR",
           yscale="log")
    if len(groups) > 1:
        ax.legend(fontsize=7)
    return fig


def plot_crossover_search(trials: Sequence[Mapping[str, Any]]) -> Figure:
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    xs = [t["number"] for t in trials]
    ys = [t["value"] for t in trials]
    queued = [t for t in trials if t["queued"]]
    ax.scatter(xs, ys, s=18, label="trial")
    ax.scatter([t["number"] for t in queued], [t["value"] for t in queued], s=60, marker="s",
               facecolors="none", edgecolors="black",
               label="queued (sweet spots, best single, uniform soup)")
    best = max if trials and trials[0].get("direction") == "maximize" else min
    ax.step(xs, list(itertools.accumulate(ys, best)), where="post", color="green",
            label="best so far")
    ax.set(title="Crossover search (the monitor on val)", xlabel="trial", ylabel="monitor")
    ax.legend(fontsize=8)
    return fig


def test_acc_errors(table: Sequence[Mapping[str, Any]]) -> list[list[float]] | None:
    """Lower and upper distances of each row's test-accuracy interval (for error bars)."""
    if not all(r.get("test_ci") for r in table):
        return None
    ci = [r["test_ci"]["acc"]["ci"] for r in table]
    return [[r["test_acc"] - lo for r, (lo, _) in zip(table, ci, strict=True)],
            [hi - r["test_acc"] for r, (_, hi) in zip(table, ci, strict=True)]]


def plot_test_table(table: Sequence[Mapping[str, Any]]) -> Figure:
    fig = _figure((9, 4))
    ax = fig.add_subplot()
    names = [r["candidate"] for r in table]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [r["val_acc"] for r in table], width=0.4, label="val acc")
    ax.bar([x + 0.2 for x in xs], [r["test_acc"] or 0 for r in table], width=0.4,
           yerr=test_acc_errors(table), capsize=3, label="test acc (95% CI)")
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    ax.set(title="Candidates: primary-task accuracy", ylabel="accuracy")
    ax.legend(fontsize=8)
    return fig


__all__ = ["PLOTS", "plot_crossover_search", "plot_learning_curves", "plot_lr_schedule",
           "plot_lr_sweep", "plot_test_table", "relative_group_losses", "save_plot",
           "test_acc_errors"]
