"""Activations of any model, measured at small shapes and scaled to the planned one.

``model.memory`` computes the activations of ``nn.TransformerEncoder`` stacks from their
shapes; a Hugging Face model, the ``ngram`` preset or a factory model has none. For those,
``profile_activations`` runs the model's forward on the CPU at three small shapes under
``torch.autograd.graph.saved_tensors_hooks`` and records, per layer (``activation_units``),
the bytes of the tensors autograd saves for backward (parameters excluded, each storage
counted once) and the bytes of the layer's input (what activation checkpointing keeps of
it). Per layer the bytes are fitted as ``rows * (c0 + c1*s + c2*s^2)`` (attention scores
grow with s^2; everything else with s or not at all), so ``estimate`` gives them for any
micro-batch and sequence length, and for another activation width (floating-point tensors
scale, integer ones such as indices do not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

# The sequence lengths the profile is measured at (with PROFILE_ROWS rows): three points
# determine c0, c1, c2; short enough to cost a fraction of a second for a small model.
PROFILE_LENGTHS = (8, 16, 32)
PROFILE_ROWS = 2
OUTSIDE = "(between layers)"  # saved tensors of code that belongs to no layer


def activation_units(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The layers activations are reported by: every item of an ``nn.ModuleList`` (a stack
    of transformer layers) and every other child that holds no such stack, in order."""
    for name, child in model.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.ModuleList):
            for i, item in enumerate(child):
                yield f"{path}.{i}", item
        elif any(isinstance(m, nn.ModuleList) for m in child.modules()):
            yield from activation_units(child, f"{path}.")
        else:
            yield path, child


def is_stacked(name: str) -> bool:
    """Whether layer ``name`` is an item of a stack (an ``nn.ModuleList``): the layers
    activation checkpointing recomputes."""
    return name != OUTSIDE and name.rsplit(".", 1)[-1].isdigit()


@dataclass
class Measured:
    """One layer's measured bytes at one shape."""

    saved_float: int = 0  # floating-point tensors saved for backward
    saved_other: int = 0  # integer and boolean ones (indices, masks)
    inputs: int = 0  # the layer's tensor inputs: what checkpointing keeps

    @property
    def saved(self) -> int:
        return self.saved_float + self.saved_other


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def measure_saved(model: nn.Module, rows: int, seq_len: int,
                  batch: Callable[[int, int], tuple[torch.Tensor, ...]] | None = None,
                  ) -> dict[str, Measured]:
    """Bytes per layer that one training forward of ``model`` saves for backward, for a
    batch of ``rows`` x ``seq_len`` (``batch(rows, seq_len)`` makes the inputs; default:
    random token ids in [5, 200) and a full mask, what every model here reads)."""
    device = next(model.parameters()).device
    make = batch or (lambda r, s: _token_batch(r, s, device))
    units = list(activation_units(model))
    stack: list[str] = []
    out: dict[str, Measured] = {name: Measured() for name, _ in units}
    out[OUTSIDE] = Measured()
    params = {_storage_key(p) for p in model.parameters()}
    seen: set[tuple[int, int]] = set(params)

    def pre(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            stack.append(name)
            out[name].inputs += sum(t.untyped_storage().nbytes() for t in _tensors(args)
                                    if t.requires_grad or t.is_floating_point())
        return hook

    def post(module: nn.Module, args: tuple, result: Any) -> None:
        stack.pop()

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in seen:
            seen.add(key)
            where = out[stack[-1] if stack else OUTSIDE]
            if t.is_floating_point():
                where.saved_float += key[1]
            else:
                where.saved_other += key[1]
        return t

    handles = []
    for name, module in units:
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post))
    was_training = model.training
    model.train()
    try:
        inputs = make(rows, seq_len)
        seen |= {_storage_key(t) for t in inputs}  # the batch itself is not an activation
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = model(*inputs)
        loss = sum(t.float().sum() for t in _tensors(result) if t.is_floating_point())
        del loss, result
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return out


def _token_batch(rows: int, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Drawn on the CPU (the seeded generator is a CPU one), then moved to the model's device.
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (rows, seq_len), generator=generator, device="cpu")
    return ids.to(device), torch.ones(rows, seq_len, dtype=torch.bool, device=device)


@dataclass
class ActivationProfile:
    """Per layer: (c0, c1, c2) of rows*(c0 + c1*s + c2*s^2) bytes, for saved floating-point
    tensors, saved other tensors and the layer's inputs, measured in ``measured_dtype``."""

    coefficients: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    measured_bytes: int = 4  # the element size of the profile's floating-point activations

    def estimate(self, rows: int, seq_len: int, act_bytes: int | None = None,
                 checkpointing: bool = False) -> dict[str, int]:
        """Bytes per layer kept for backward for ``rows`` x ``seq_len`` at ``act_bytes``
        per floating-point value; with checkpointing, the layers of a stack (the items of
        a ModuleList) keep only their inputs, plus (under ``"(recompute)"``) the largest
        one's full activations, rebuilt one layer at a time in backward."""
        scale = (act_bytes or self.measured_bytes) / self.measured_bytes

        def at(c: tuple[float, float, float]) -> float:
            return max(0.0, rows * (c[0] + c[1] * seq_len + c[2] * seq_len * seq_len))

        out: dict[str, int] = {}
        full: dict[str, int] = {}
        for name, parts in self.coefficients.items():
            saved = at(parts["saved_float"]) * scale + at(parts["saved_other"])
            full[name] = int(saved)
            out[name] = (int(at(parts["inputs"]) * scale) if checkpointing and is_stacked(name)
                         else int(saved))
        if checkpointing:
            out["(recompute)"] = max((b for n, b in full.items() if is_stacked(n)), default=0)
        return out


def profile_activations(model: nn.Module,
                        batch: Callable[[int, int], tuple[torch.Tensor, ...]] | None = None,
                        lengths: tuple[int, ...] = PROFILE_LENGTHS, rows: int = PROFILE_ROWS,
                        ) -> ActivationProfile:
    """Measure ``model`` at ``rows`` x each of ``lengths`` and fit each layer's bytes."""
    # Dropout draws from the global RNG: the profile must not change what training draws.
    with torch.random.fork_rng(devices=[]):
        runs = [measure_saved(model, rows, s, batch) for s in lengths]
    x = np.array([[1.0, s, s * s] for s in lengths])
    coefficients = {}
    for name in runs[0]:
        parts = {}
        for part in ("saved_float", "saved_other", "inputs"):
            y = np.array([getattr(r[name], part) / rows for r in runs], dtype=float)
            c, *_ = np.linalg.lstsq(x, y, rcond=None)
            parts[part] = (float(c[0]), float(c[1]), float(c[2]))
        coefficients[name] = parts
    width = next((p.element_size() for p in model.parameters() if p.is_floating_point()), 4)
    return ActivationProfile(coefficients, width)


__all__ = ["OUTSIDE", "PROFILE_LENGTHS", "ActivationProfile", "Measured", "activation_units", "is_stacked",
           "measure_saved", "profile_activations"]
