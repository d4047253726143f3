"""What the long run writes beside each modular checkpoint: the strategy's detailed
metrics (parameter and gradient statistics per group, overfitting and learning-efficiency
figures, memory) and a progress report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from model.groups import GroupSpec
from model.training import tensor_stats
from storage import Session
from storage.checkpoints import save_checkpoint


def detailed_metrics(model: torch.nn.Module, spec: GroupSpec, metrics: dict,
                     history: Sequence[dict]) -> dict[str, Any]:
    """The strategy's per-checkpoint detail: parameter stats per group, gradient stats per group
    (last optimizer step of the epoch), overfitting and learning-efficiency figures, memory."""
    params = {}
    for group in spec.groups:
        tensors = [p for _, p in spec.named_parameters_of(model, group)]
        if tensors:
            params[group] = tensor_stats(torch.cat([p.detach().flatten() for p in tensors]))
    prev = history[-2] if len(history) > 1 else None
    return {
        "epoch": metrics["epoch"],
        "metrics": metrics,
        "detailed": {
            "parameter_stats": params,
            "gradient_stats": metrics.get("group_grad_stats", {}),
            "learning_efficiency": {
                "loss_improvement": (prev["train_loss"] - metrics["train_loss"]) if prev else None,
                "val_improvement": (prev["val_loss"] - metrics["val_loss"]) if prev else None,
                "within_epoch": metrics["learning_efficiency"],
                "convergence_speed": metrics["convergence_speed"]},
            "overfitting_metrics": {
                "train_val_gap": metrics["overfit_gap"],
                "generalization_error": abs(metrics["train_acc"] - metrics["val_acc"])},
            "memory": {"peak_bytes": metrics["peak_memory_bytes"]},
        },
    }


def progress_report(epoch: int, total_epochs: int, checkpoints: Sequence[int],
                    history: Sequence[dict]) -> dict[str, Any]:
    best = min(history, key=lambda h: h["val_loss"])
    gaps = [h["overfit_gap"] for h in history if h["epoch"] in checkpoints][-4:]
    return {
        "epoch": epoch,
        "total_checkpoints": len(checkpoints),
        # Of the maximum: an early stop ends the run before 100%.
        "training_progress": 100.0 * epoch / total_epochs,
        "metrics_summary": {"train_loss": history[-1]["train_loss"],
                            "val_loss": history[-1]["val_loss"], "val_acc": history[-1]["val_acc"]},
        "best_performance": {"epoch": best["epoch"], "val_loss": best["val_loss"],
                             "val_acc": best["val_acc"]},
        "overfitting_analysis": {"recent_checkpoint_gaps": gaps,
                                 "gap_rising": len(gaps) >= 3 and all(
                                     a < b for a, b in zip(gaps[-3:], gaps[-2:], strict=False))},
        "timestamp": datetime.now(UTC).isoformat(),
    }


def write_checkpoint(root: Path, epoch: int, engine: Any, spec: GroupSpec, metrics: dict,
                     history: list[dict], max_epochs: int, dtype: torch.dtype | None,
                     checkpoints: list[int], session: Session, with_ema: bool) -> None:
    """The modular checkpoint of ``epoch`` (group weights at ``dtype``, None: as trained)
    and its evidence files; ``epoch`` joins ``checkpoints``."""
    # The EMA is read from the last checkpoint only (the "ema" candidate of phase 4): the
    # other checkpoints do not store it, which halves their size (the resume state has it).
    ema = None
    if engine.ema is not None and with_ema:
        ema = dict(engine.ema.module.state_dict())
    basic = {k: metrics[k] for k in ("epoch", "train_loss", "val_loss", "train_acc", "val_acc",
                                     "overfit_gap")}
    basic["val_module_loss"] = metrics["val_module_loss"]
    save_checkpoint(root, epoch, engine.model, spec, basic, ema,
                    dtype)
    if epoch not in checkpoints:
        checkpoints.append(epoch)
    session.write_json(f"checkpoints/metrics_epoch_{epoch:03d}.json",
                       detailed_metrics(engine.model, spec, metrics, history))
    session.write_json(f"checkpoints/progress_report_epoch_{epoch:03d}.json",
                       progress_report(epoch, max_epochs, checkpoints, history))


__all__ = ["detailed_metrics", "progress_report", "write_checkpoint"]
