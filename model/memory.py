"""A GPU memory plan from shapes alone, made before anything is allocated.

``plan_memory`` counts, for a model and a training setup, the bytes of each thing a
training step keeps on the GPU: weights, gradients, optimizer state, the EMA copy,
activations saved for backward (R-Drop doubles the batch) and a workspace margin. Weights,
gradients and optimizer state are exact (they are sums over the real parameter shapes,
taken from a model built on the meta device); activations are an estimate from the
transformer shapes, after Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", per layer s*b*h*34 + 5*a*s^2*b bytes in 16 bit for a 4h MLP),
generalized to any MLP width and to the dropouts this model keeps. Nothing here is
calibrated from a measurement of the run it plans.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

GIB = 1024**3
WORKSPACE_BYTES = 64 * 1024**2  # cuBLAS/cuDNN workspaces and the allocator's rounding
FRAGMENTATION = 0.05  # of everything else: blocks the caching allocator cannot reuse


@dataclass(frozen=True)
class TrainShape:
    """What a training step looks like: micro-batch rows, sequence length, precision."""

    batch_size: int
    seq_len: int
    precision: str = "bf16"  # fp32 | bf16 | fp16: autocast activations (weights stay fp32)
    r_drop: bool = True  # both dropout passes in one doubled batch
    ema_on_gpu: bool = True
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")


@dataclass(frozen=True)
class Encoder:
    """One transformer stack: layers, width, heads, MLP width."""

    layers: int
    d_model: int
    heads: int
    d_ff: int


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors (meta tensors count by shape and dtype)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def adamw_state_bytes(params: Iterable[torch.Tensor]) -> int:
    """torch.optim.AdamW's state: exp_avg and exp_avg_sq in each parameter's dtype, and a
    float32 ``step`` tensor per parameter (fused and foreach implementations)."""
    return sum(2 * p.numel() * p.element_size() + 4 for p in params)


def layer_activation_bytes(enc: Encoder, rows: int, seq_len: int, act_bytes: int) -> int:
    """Bytes one pre-norm layer saves for backward, for ``rows`` sequences.

    In 16-bit units (Korthikanti et al.): attention 11*s*b*h + 4*a*s^2*b (scores and
    softmax; this model drops no attention probabilities), MLP 3*s*b*h + 4*s*b*ff, the two
    layer norms 4*s*b*h; scaled by ``act_bytes`` / 2 for other activation widths.
    """
    s, b, h, a, ff = seq_len, rows, enc.d_model, enc.heads, enc.d_ff
    units = 18 * s * b * h + 4 * s * b * ff + 4 * a * s * s * b
    return units * act_bytes // 2


def activation_bytes(encoders: Iterable[Encoder], shape: TrainShape) -> int:
    """Activations of all transformer stacks for one micro-batch: every layer's, or with
    checkpointing each layer's input plus the one layer being recomputed."""
    act = 4 if shape.precision == "fp32" else 2
    rows = shape.batch_size * (2 if shape.r_drop else 1)
    total = 0
    for enc in encoders:
        one = layer_activation_bytes(enc, rows, shape.seq_len, act)
        if shape.activation_checkpointing:
            total += enc.layers * rows * shape.seq_len * enc.d_model * act + one
        else:
            total += enc.layers * one
    return total


def encoders_of(model: nn.Module) -> list[Encoder]:
    """Every nn.TransformerEncoder in ``model`` as an Encoder (works on the meta device)."""
    out = []
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and len(module.layers):
            layer = module.layers[0]
            out.append(Encoder(len(module.layers), layer.linear1.in_features,
                               layer.self_attn.num_heads, layer.linear1.out_features))
    return out


def plan_memory(model: nn.Module, shape: TrainShape) -> dict[str, int]:
    """Peak GPU bytes by component for training ``model`` (built on any device, meta
    included) with AdamW in ``shape``; ``total`` sums them."""
    params = [p for p in model.parameters() if p.requires_grad]
    weights = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    parts = {
        "weights": weights,
        "gradients": tensor_bytes(params),
        "optimizer_state": adamw_state_bytes(params),
        "ema": weights if shape.ema_on_gpu else 0,
        "activations": activation_bytes(encoders_of(model), shape),
    }
    rest = sum(parts.values())
    parts["workspace"] = WORKSPACE_BYTES + int(FRAGMENTATION * rest)
    parts["total"] = rest + parts["workspace"]
    return parts


def plan_table(parts: dict[str, int], budget_gib: float | None = None) -> list[str]:
    """The plan as Markdown table lines (GiB), with the budget and the headroom if given."""
    lines = ["| component | GiB |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {b / GIB:.2f} |" for name, b in parts.items()
              if name != "total"]
    lines.append(f"| **total** | **{parts['total'] / GIB:.2f}** |")
    if budget_gib is not None:
        left = budget_gib - parts["total"] / GIB
        lines.append(f"| budget | {budget_gib:.2f} ({'fits' if left >= 0 else 'does not fit'}, "
                     f"{left:+.2f}) |")
    return lines


def disk_plan(model: nn.Module, checkpoints: int, dtype_bytes: int = 4,
              ema: bool = True, resume_states: int = 2) -> dict[str, int]:
    """Disk bytes of a long run: ``checkpoints`` modular checkpoints of the weights at
    ``dtype_bytes`` per value, the EMA once (in the last one, at the same width), and the
    kept resume states at full precision (weights, AdamW's two moments, the EMA)."""
    values = sum(v.numel() for v in model.state_dict().values())
    full = tensor_bytes(model.state_dict().values())
    params = [p for p in model.parameters() if p.requires_grad]
    parts = {"checkpoints": checkpoints * values * dtype_bytes,
             "ema": values * dtype_bytes if ema else 0,
             "resume_states": resume_states * (full + adamw_state_bytes(params)
                                               + (full if ema else 0))}
    parts["total"] = sum(parts.values())
    return parts


__all__ = ["GIB", "Encoder", "TrainShape", "activation_bytes", "adamw_state_bytes",
           "disk_plan", "encoders_of", "layer_activation_bytes", "plan_memory",
           "plan_table", "tensor_bytes"]
