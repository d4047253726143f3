"""A GPU memory plan from shapes alone, made before anything is allocated.

``plan_memory`` counts, for a model and a training setup, the bytes of each thing a
training step keeps on the GPU: weights, gradients, optimizer state, the EMA copy,
activations saved for backward (R-Drop doubles the batch) and a workspace margin. Weights,
gradients and optimizer state are exact (they are sums over the real parameter shapes,
taken from a model built on the meta device); activations are an estimate from the
transformer shapes, after Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", per layer s*b*h*34 + 5*a*s^2*b bytes in 16 bit for a 4h MLP),
generalized to any MLP width and to the dropouts this model keeps. A model without
``nn.TransformerEncoder`` stacks (a Hugging Face model, the ``ngram`` preset, a factory
model) gets its activations from an ``ActivationProfile`` instead: measured per layer on
the CPU at small shapes and scaled to the planned one (``model.activations``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from .activations import ActivationProfile
from .optimizers import LOWBIT_BLOCK, LOWBIT_MIN_SIZE, OFFLOAD_MIN_SIZE, OPTIMIZERS, option

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
    optimizer: str = "adamw"  # model.optimizers: adamw | adamw8bit | adamw-offload

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


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


def lowbit_adamw_state_bytes(params: Iterable[torch.Tensor], dtype_bytes: int = 2) -> int:
    """torchao's AdamW8bit state: a tensor of at least LOWBIT_MIN_SIZE values that splits
    into LOWBIT_BLOCK blocks keeps each moment as uint8 codes, one fp32 scale per block and
    a 256-entry fp32 code map; smaller ones keep both moments at ``dtype_bytes``; every
    parameter has a float32 ``step``."""
    total = 0
    for p in params:
        n = p.numel()
        if n >= LOWBIT_MIN_SIZE and n % LOWBIT_BLOCK == 0:
            total += 2 * (n + n // LOWBIT_BLOCK * 4 + 256 * 4)
        else:
            total += 2 * n * dtype_bytes
        total += 4
    return total


def lowbit_step_temporary_bytes(params: Iterable[torch.Tensor]) -> int:
    """The fp32 temporaries torchao's 8-bit step makes for one tensor at a time (the two
    dequantized moments and the update): three fp32 copies of the largest tensor."""
    return 3 * 4 * max((p.numel() for p in params), default=0)


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


def profiled_activation_layers(profile: ActivationProfile, shape: TrainShape) -> dict[str, int]:
    """Activations of a profiled model per layer for one micro-batch of ``shape`` (R-Drop
    doubles the rows; with checkpointing, stacked layers keep their inputs plus one
    recompute)."""
    act = 4 if shape.precision == "fp32" else 2
    rows = shape.batch_size * (2 if shape.r_drop else 1)
    return profile.estimate(rows, shape.seq_len, act, shape.activation_checkpointing)


def profiled_activation_bytes(profile: ActivationProfile, shape: TrainShape) -> int:
    """``profiled_activation_layers`` summed."""
    return sum(profiled_activation_layers(profile, shape).values())


def plan_memory(model: nn.Module, shape: TrainShape,
                profile: ActivationProfile | None = None) -> dict[str, int]:
    """Peak GPU bytes by component for training ``model`` (built on any device, meta
    included) with ``shape.optimizer`` in ``shape``; ``total`` sums them. Activations come
    from the model's transformer stacks, else from ``profile`` (0 without either).

    adamw8bit: weights and gradients in bf16, moments as torchao stores them, and the fp32
    temporaries of its step (``lowbit_step_temporary_bytes``). adamw-offload: moments of
    tensors of OFFLOAD_MIN_SIZE values or more live on the CPU; only the small ones' stay on
    the GPU. The EMA is an fp32 copy either way.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    width = option(shape.optimizer).weights_dtype.itemsize
    encoders = encoders_of(model)

    def weights_bytes(tensors: Iterable[torch.Tensor]) -> int:
        return sum(t.numel() * (width if t.is_floating_point() else t.element_size())
                   for t in tensors)

    fp32 = tensor_bytes(model.parameters()) + tensor_bytes(model.buffers())
    if shape.optimizer == "adamw8bit":
        state = lowbit_adamw_state_bytes(params, width) + lowbit_step_temporary_bytes(params)
    elif shape.optimizer == "adamw-offload":
        state = adamw_state_bytes([p for p in params if p.numel() < OFFLOAD_MIN_SIZE])
    else:
        state = adamw_state_bytes(params)
    parts = {
        "weights": weights_bytes(model.parameters()) + weights_bytes(model.buffers()),
        "gradients": weights_bytes(params),
        "optimizer_state": state,
        "ema": fp32 if shape.ema_on_gpu else 0,
        "activations": activation_bytes(encoders, shape) if encoders else (
            profiled_activation_bytes(profile, shape) if profile is not None else 0),
    }
    rest = sum(parts.values())
    parts["workspace"] = WORKSPACE_BYTES + int(FRAGMENTATION * rest)
    parts["total"] = rest + parts["workspace"]
    return parts


@dataclass(frozen=True)
class DeviceSpeed:
    """Rates for estimating a step's time before any measurement. The defaults are for an
    8 GB consumer card: ~25 TFLOP/s achieved in bf16 matmuls (half of an RTX 4060 Ti's
    dense peak), PCIe 4.0 x16 at ~12 GB/s effective for pinned copies, and a desktop CPU
    streaming AdamW's fused step at ~10 GB/s. bench/gpu.py measures the real figures."""

    flops: float = 25e12
    pcie_bytes_s: float = 12e9
    host_bytes_s: float = 10e9


def estimate_step_seconds(model: nn.Module, shape: TrainShape, grad_accum: int = 1,
                          speed: DeviceSpeed = DeviceSpeed()) -> dict[str, float]:
    """Seconds of one optimizer step (``grad_accum`` micro-batches), by component.

    compute: 6 FLOPs per parameter per token (forward 2, backward 4; Kaplan et al. 2020),
    plus 2 more with activation checkpointing (the forward runs again), over the micro-
    batch's tokens (R-Drop's two passes). ema_copy: the EMA on the CPU takes one host copy
    of the weights per step. offload: the gradients to the CPU after every micro-batch
    (torchao copies them as backward accumulates), the weights back once, and the CPU's
    AdamW reading and writing weights, gradient and two moments (7 x 4 bytes per value).
    8-bit AdamW is costed as AdamW: on a GPU its forward and backward are the same bf16
    matmuls under autocast, and both steps are a few memory-bound passes over the weights.
    """
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = shape.batch_size * shape.seq_len * (2 if shape.r_drop else 1)
    flops_per_token = 6 + (2 if shape.activation_checkpointing else 0)
    out = {"compute": grad_accum * flops_per_token * n * tokens / speed.flops,
           "ema_copy": 0.0 if shape.ema_on_gpu else 4 * n / speed.pcie_bytes_s,
           "offload": 0.0}
    if shape.optimizer == "adamw-offload":
        out["offload"] = ((grad_accum + 1) * 4 * n / speed.pcie_bytes_s
                          + 7 * 4 * n / speed.host_bytes_s)
    out["total"] = sum(out.values())
    return out


@dataclass(frozen=True)
class FitOption:
    """One combination the planner may switch on, with its plan and estimated step time."""

    optimizer: str
    activation_checkpointing: bool
    ema_on_gpu: bool
    total_bytes: int
    step_seconds: float
    moves_ema: bool = False  # the run has an EMA on the GPU and this option moves it

    @property
    def exact(self) -> bool:
        """Whether training computes what the plain fp32 AdamW run computes (checkpointing
        recomputes the same activations, the EMA and the offloaded step are the same math)."""
        return option(self.optimizer).weights_dtype == torch.float32

    def describe(self) -> str:
        parts = {"adamw8bit": "bf16 weights with torchao's 8-bit AdamW",
                 "adamw-offload": "AdamW offloaded to the CPU (torchao)"}
        words = [parts[self.optimizer]] if self.optimizer in parts else []
        if self.activation_checkpointing:
            words.append("activation checkpointing")
        if self.moves_ema:
            words.append("the EMA on the CPU")
        return " and ".join(words) or "the run as configured"


def fit_options(model: nn.Module, shape: TrainShape, grad_accum: int,
                optimizers: Iterable[str], speed: DeviceSpeed = DeviceSpeed(),
                profile: ActivationProfile | None = None) -> list[FitOption]:
    """Every combination of ``optimizers``, activation checkpointing and (when the run has
    an EMA on the GPU) the EMA on the CPU, starting from ``shape``; fastest estimated step
    first, an exact option before an inexact one of the same estimate."""
    out = []
    for opt in dict.fromkeys(optimizers):
        for ckpt in sorted({shape.activation_checkpointing, True}):
            for on_gpu in sorted({shape.ema_on_gpu, False}, reverse=True):
                s = replace(shape, optimizer=opt, activation_checkpointing=ckpt,
                            ema_on_gpu=on_gpu)
                out.append(FitOption(opt, ckpt, on_gpu, plan_memory(model, s, profile)["total"],
                                     estimate_step_seconds(model, s, grad_accum, speed)["total"],
                                     shape.ema_on_gpu and not on_gpu))
    return sorted(out, key=lambda o: (o.step_seconds, not o.exact, o.total_bytes))


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
              ema: bool = True, resume_states: int = 2, optimizer: str = "adamw",
              ema_bytes: int | None = None) -> dict[str, int]:
    """Disk bytes of a long run: ``checkpoints`` modular checkpoints of the weights at
    ``dtype_bytes`` per value, the EMA once (in the last one, at ``ema_bytes``: the
    checkpoints' width by default; an fp32 EMA beside bf16 weights is stored at 4), and the
    kept resume states at the precision training keeps (the weights in the optimizer's
    dtype, its moments as stored, the fp32 EMA)."""
    values = sum(v.numel() for v in model.state_dict().values())
    full = tensor_bytes(model.state_dict().values())
    params = [p for p in model.parameters() if p.requires_grad]
    width = option(optimizer).weights_dtype.itemsize
    moments = (lowbit_adamw_state_bytes(params, width) if optimizer == "adamw8bit"
               else adamw_state_bytes(params))
    parts = {"checkpoints": checkpoints * values * dtype_bytes,
             "ema": values * (ema_bytes or dtype_bytes) if ema else 0,
             "resume_states": resume_states * (values * width + moments
                                               + (full if ema else 0))}
    parts["total"] = sum(parts.values())
    return parts


__all__ = [
    "GIB",
    "DeviceSpeed",
    "Encoder",
    "FitOption",
    "TrainShape",
    "activation_bytes",
    "adamw_state_bytes",
    "disk_plan",
    "encoders_of",
    "estimate_step_seconds",
    "fit_options",
    "layer_activation_bytes",
    "lowbit_adamw_state_bytes",
    "lowbit_step_temporary_bytes",
    "plan_memory",
    "plan_table",
    "profiled_activation_bytes",
    "profiled_activation_layers",
    "tensor_bytes",
]
