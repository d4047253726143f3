"""Training techniques of the strategy (section 4.2), each a small pure piece.

- multi-module loss with label smoothing: fused loss + aux_weight x each module's own loss
- R-Drop (Liang et al. 2021): two dropout passes, symmetric KL between them
- EMA of the weights, updated every optimizer step (``AveragedModel``)
- layer-wise LR decay (LLRD) parameter groups read off a ``GroupSpec``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

from .groups import GroupSpec
from .tasks import TaskSpec, consistency_loss, task_loss

Outputs = Mapping[str, Mapping[str, torch.Tensor]]


def module_losses(
    outputs: Outputs,
    targets: Mapping[str, torch.Tensor],
    tasks: Sequence[TaskSpec],
    label_smoothing: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Loss of each module's own predictions, summed over the tasks it predicts.

    Keys are the module names of ``outputs`` (always ``"fused"``); values are scalars.
    """
    by_name = {t.name: t for t in tasks}
    return {
        module: sum(task_loss(by_name[t], p, targets[t], label_smoothing) for t, p in preds.items())
        for module, preds in outputs.items()
    }


def total_loss(losses: Mapping[str, torch.Tensor], aux_weight: float) -> torch.Tensor:
    """Fused loss + aux_weight x the sum of every other module's loss."""
    aux = [v for k, v in losses.items() if k != "fused"]
    if aux_weight == 0 or not aux:
        return losses["fused"]
    return losses["fused"] + aux_weight * torch.stack(aux).sum()


def r_drop_consistency(
    first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], tasks: Sequence[TaskSpec]
) -> torch.Tensor:
    """Symmetric divergence between two dropout passes' fused predictions, summed over tasks."""
    return sum(consistency_loss(t, first[t.name], second[t.name]) for t in tasks)


def split_outputs(outputs: Outputs, rows: int) -> tuple[dict, dict]:
    """Split outputs of a doubled batch (2B rows) into the two passes (B rows each)."""
    a = {m: {t: p[:rows] for t, p in preds.items()} for m, preds in outputs.items()}
    b = {m: {t: p[rows:] for t, p in preds.items()} for m, preds in outputs.items()}
    return a, b


def build_ema(model: nn.Module, decay: float, device: str | None = None,
              dtype: torch.dtype | None = None) -> AveragedModel:
    """EMA copy of ``model``: ema <- decay * ema + (1 - decay) * param on every
    ``update_parameters`` call; the first call copies the weights. ``device`` ("cpu")
    keeps the copy there instead of beside the model; ``dtype`` keeps it at that precision
    when the model's floating weights have another (an fp32 EMA of bf16 weights)."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
    weights = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtype is None or weights <= {dtype}:
        return AveragedModel(model, device=device, multi_avg_fn=get_ema_multi_avg_fn(decay),
                             use_buffers=True)
    # The per-tensor form: torch's multi-tensor lerp needs both sides in one dtype.
    ema = AveragedModel(model, device=device, avg_fn=get_ema_avg_fn(decay), use_buffers=True)
    return ema.to(dtype=dtype)


def llrd_param_groups(
    model: nn.Module,
    spec: GroupSpec,
    base_lr: float,
    decay: float = 0.9,
    analyzer_scale: float = 0.7,
) -> list[dict]:
    """Optimizer parameter groups with layer-wise LR decay.

    With N layers, layer i (0 = bottom) trains at base_lr * decay**(N - i), as in the
    seed: the top layer at 0.9x, each lower one 0.9x again; what lies below the first
    layer (embeddings) at decay**(N + 1). Analyzers train at analyzer_scale x base_lr;
    heads and everything else at base_lr. Each group carries a ``name``.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"LLRD decay must be in (0, 1], got {decay!r}")
    if analyzer_scale <= 0.0:
        raise ValueError(f"analyzer LR scale must be > 0, got {analyzer_scale!r}")
    if decay == 1.0 and analyzer_scale == 1.0:  # LLRD off: one group, one fused kernel call
        return [{"name": "all", "params": [p for p in model.parameters() if p.requires_grad],
                 "lr": base_lr}]
    n = len(spec.layers)
    rules: list[tuple[str, tuple[str, ...], float]] = [
        (f"layer_{i}", (pre,), decay ** (n - i)) for i, pre in enumerate(spec.layers)
    ]
    rules += [("below_layers", spec.below_layers, decay ** (n + 1)),
              ("analyzers", spec.analyzers, analyzer_scale)]
    buckets: dict[str, tuple[float, list[nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        label, scale = "heads", 1.0
        for rule_name, prefixes, rule_scale in rules:
            if any(name.startswith(pre) for pre in prefixes):
                label, scale = rule_name, rule_scale
                break
        buckets.setdefault(label, (scale, []))[1].append(p)
    return [{"name": k, "params": ps, "lr": base_lr * s} for k, (s, ps) in buckets.items()]
