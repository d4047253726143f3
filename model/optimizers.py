"""The optimizers a run can train with, and their state as named tensors plus JSON.

``adamw``          torch's fused AdamW; fp32 weights, fp32 moments (16 bytes per parameter
                   with the gradient, before activations).
``adamw8bit``      torchao's AdamW8bit: bf16 weights and gradients, block-wise 8-bit moments
                   (Dettmers et al. 2022), bf16 stochastic rounding of the update, so the
                   small steps that round-to-nearest would drop still move the weights on
                   average; 6 bytes per parameter.
``adamw-offload``  torchao's CPUOffloadOptimizer around torch's AdamW: fp32 weights and
                   gradients on the GPU, the master moments and the step on the CPU
                   (CUDA only: torchao asserts a CUDA or XPU device).

torchao is optional (``pip install -e '.[gpu]'``) and imported only when its option is used.
Optimizer states are stored through the optimizers' public ``state_dict()``: every tensor
goes to safetensors by name; torchao's 8-bit moments (a tensor subclass) are stored as their
public ``codes``/``scale``/``qmap`` tensors and rebuilt with the public constructor.
Nothing is unpickled.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# torchao keeps moments of tensors below this size, or not a multiple of the block, in the
# parameter's dtype (it follows bitsandbytes here); the plan counts them the same way.
LOWBIT_MIN_SIZE = 4096
LOWBIT_BLOCK = 256
OFFLOAD_MIN_SIZE = 4096  # CPUOffloadOptimizer keeps smaller tensors' state on the GPU


@dataclass(frozen=True)
class OptimizerOption:
    """What an optimizer choice means for the weights and where it runs."""

    name: str
    weights_dtype: torch.dtype
    needs_cuda: bool
    package: str | None  # the optional package it needs (None: torch alone)


OPTIONS: dict[str, OptimizerOption] = {
    "adamw": OptimizerOption("adamw", torch.float32, False, None),
    "adamw8bit": OptimizerOption("adamw8bit", torch.bfloat16, False, "torchao"),
    "adamw-offload": OptimizerOption("adamw-offload", torch.float32, True, "torchao"),
}
OPTIMIZERS = tuple(OPTIONS)


def option(name: str) -> OptimizerOption:
    if name not in OPTIONS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    return OPTIONS[name]


def available(name: str) -> bool:
    """Whether the package ``name`` needs is installed (nothing is imported)."""
    pkg = option(name).package
    return pkg is None or importlib.util.find_spec(pkg) is not None


def _require(name: str) -> None:
    if not available(name):
        raise ValueError(f"optimizer {name!r} needs the optional package "
                         f"{option(name).package!r}: pip install -e '.[gpu]'")
    if option(name).package == "torchao":
        # torchao's import warns (on its "torchao" logger) about kernels for other GPUs and
        # triton, none of which its optimizers use; those lines would read as our problem.
        ao = logging.getLogger("torchao")
        level = ao.level
        ao.setLevel(logging.ERROR)
        try:
            import torchao.optim  # noqa: F401
        finally:
            ao.setLevel(level)


def build_optimizer(name: str, groups: Sequence[dict], lr: float, weight_decay: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """The optimizer ``name`` over parameter ``groups`` (each with its own ``lr``)."""
    _require(name)
    _check_device(name, device.type)
    if name == "adamw":
        # fused: one kernel for all parameters (CPU and CUDA); ~10% of a tiny model's step otherwise.
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw8bit":
        from torchao.optim import AdamW8bit

        return AdamW8bit(groups, lr=lr, weight_decay=weight_decay,
                         bf16_stochastic_round=True)
    from torchao.optim import CPUOffloadOptimizer

    # offload_gradients=False: torchao frees the GPU gradient after copying it, which breaks
    # gradient accumulation (the strategy accumulates 16 micro-batches per step).
    return CPUOffloadOptimizer(groups, torch.optim.AdamW, offload_gradients=False,
                               minimal_size=OFFLOAD_MIN_SIZE, fused=True, lr=lr,
                               weight_decay=weight_decay)


def clip_targets(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
                 ) -> list[torch.Tensor]:
    """The tensors whose gradients the optimizer's step reads, for gradient clipping.

    The offload optimizer steps on CPU copies of the gradients, taken as backward ends;
    clipping the GPU gradients after that would not reach them, so its copies are clipped
    (after the copies finish).
    """
    if type(optimizer).__name__ != "CPUOffloadOptimizer":
        return list(params)
    torch.cuda.synchronize()
    return [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


def sync_offloaded_weights(optimizer: torch.optim.Optimizer) -> None:
    """After weights are loaded into the model: the offload optimizer steps on CPU copies
    of the weights taken when it was built and writes them back over the GPU weights, so
    the copies must take the loaded values too (through its public ``param_d2h_map``)."""
    for device_param, host_param in getattr(optimizer, "param_d2h_map", {}).items():
        host_param.detach().copy_(device_param.detach())


_NO_FP16 = {
    "adamw8bit": "it trains bf16 weights, which fp16 autocast cannot use",
    "adamw-offload": "it steps on CPU copies of the gradients taken during backward, before "
                     "fp16's GradScaler unscales them",
}


def check_precision(name: str, precision: str) -> None:
    """fp16 autocast (with its GradScaler) is for plain AdamW only."""
    if precision == "fp16" and name in _NO_FP16:
        raise ValueError(f"optimizer {name!r} cannot train with fp16 autocast: "
                         f"{_NO_FP16[name]}; choose precision bf16 or auto")


def _check_device(name: str, device: str) -> None:
    if option(name).needs_cuda and not device.startswith("cuda"):
        raise ValueError(f"optimizer {name!r} needs a CUDA device, got {device!r}")


def check_world(name: str, world: int) -> None:
    """The offload optimizer is single-process: torchao copies each gradient to the CPU
    before DDP averages it."""
    if name == "adamw-offload" and world > 1:
        raise ValueError(f"optimizer {name!r} is single-process (torchao copies each gradient "
                         f"to the CPU before DDP averages it), got {world} processes")


def check_choice(name: str, device: str, precision: str, world: int = 1) -> None:
    """Refuse, before anything is written, an optimizer this run cannot use: not
    installed, needs CUDA, cannot take fp16's GradScaler, or (offload) several processes."""
    _require(name)
    _check_device(name, device)
    check_precision(name, precision)
    check_world(name, world)


# -- state: named tensors + JSON ---------------------------------------------------------------

_SUBCLASS_FIELDS = ("codes", "scale", "qmap")
# The dtypes an 8-bit moment may present (its parameter's), by the name it is stored under.
_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16)}


def _is_8bit(value: Any) -> bool:
    return type(value).__name__ == "OptimState8bit" and all(
        torch.is_tensor(getattr(value, f, None)) for f in _SUBCLASS_FIELDS)


def _split_value(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if _is_8bit(value):
        for f in _SUBCLASS_FIELDS:
            tensors[f"{key}.{f}"] = getattr(value, f)
        return {"state8bit": key, "signed": bool(value.signed), "dtype": str(value.dtype)}
    if torch.is_tensor(value):
        if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            raise ValueError(f"optimizer state {key!r} is a {type(value).__name__}, which "
                             "cannot be stored as plain tensors; resume is not offered for it")
        tensors[key] = value
        return {"tensor": key}
    return {"value": value}


def _join_value(entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Any:
    if "tensor" in entry:
        return tensors[entry["tensor"]]
    if "state8bit" in entry:
        from torchao.optim.subclass_8bit import OptimState8bit

        key = entry["state8bit"]
        if entry["dtype"] not in _DTYPES:
            raise ValueError(f"optimizer state {key!r}: dtype {entry['dtype']!r} is not one of "
                             f"{sorted(_DTYPES)}")
        dtype = _DTYPES[entry["dtype"]]
        return OptimState8bit(*(tensors[f"{key}.{f}"] for f in _SUBCLASS_FIELDS),
                              bool(entry["signed"]), dtype=dtype)
    return entry["value"]


def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` (nested dicts and lists, as a scheduler's or an optimizer group's state) with
    every tensor moved into ``tensors`` under a name starting with ``prefix`` and replaced by
    a reference to it. torchao keeps LRs as tensors, so its schedulers' state holds some."""
    if torch.is_tensor(obj):
        return _split_value(obj, prefix, tensors)
    if isinstance(obj, dict):
        return {k: split_tensors(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of ``split_tensors``."""
    if isinstance(obj, dict):
        if "tensor" in obj or "state8bit" in obj:
            return _join_value(obj, tensors)
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def _split_one(state: Mapping[str, Any], prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    return {"state": {str(pid): {name: _split_value(v, f"{prefix}.{pid}.{name}", tensors)
                                 for name, v in entries.items()}
                      for pid, entries in state["state"].items()},
            "param_groups": [split_tensors(g, f"{prefix}.group{i}", tensors)
                             for i, g in enumerate(state["param_groups"])]}


def _join_one(plain: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict:
    state = {int(pid): {name: _join_value(e, tensors) for name, e in entries.items()}
             for pid, entries in plain["state"].items()}
    return {"state": state, "param_groups": join_tensors(plain["param_groups"], tensors)}


def split_state(state: Mapping[str, Any], prefix: str = "optimizer"
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict()`` as named tensors plus JSON-able data that names them.

    Handles torch's layout ({"state", "param_groups"}) and the offload optimizer's
    ({"offloaded": [one per tensor], "on-device": ...}).
    """
    tensors: dict[str, torch.Tensor] = {}
    if "offloaded" in state:
        plain: dict[str, Any] = {"offloaded": [_split_one(s, f"{prefix}.off{i}", tensors)
                                               for i, s in enumerate(state["offloaded"])]}
        if "on-device" in state:
            plain["on-device"] = _split_one(state["on-device"], f"{prefix}.dev", tensors)
        return tensors, plain
    return tensors, _split_one(state, prefix, tensors)


def join_state(plain: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict:
    """The inverse of ``split_state``: a dict for the optimizer's ``load_state_dict``."""
    if "offloaded" in plain:
        out: dict[str, Any] = {"offloaded": [_join_one(p, tensors) for p in plain["offloaded"]]}
        if "on-device" in plain:
            out["on-device"] = _join_one(plain["on-device"], tensors)
        return out
    return _join_one(plain, tensors)


def state_tensor_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state as stored (8-bit moments by their codes, scales and
    map), from the real tensors."""
    tensors, _ = split_state(optimizer.state_dict())
    return sum(t.numel() * t.element_size() for k, t in tensors.items() if ".group" not in k)


__all__ = ["LOWBIT_BLOCK", "LOWBIT_MIN_SIZE", "OFFLOAD_MIN_SIZE", "OPTIMIZERS", "OPTIONS",
           "OptimizerOption", "available", "build_optimizer", "check_choice", "check_precision",
           "check_world",
           "clip_targets", "join_state", "join_tensors", "option", "split_state",
           "split_tensors", "state_tensor_bytes", "sync_offloaded_weights"]
