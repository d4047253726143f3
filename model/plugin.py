"""Bring your own model: ``--model package.module:factory`` (or ``hf:<folder>``, see
``model.hf``).

The factory is called as ``factory(tasks=(TaskSpec, ...), max_length=int)`` and returns
``(module, GroupSpec)``. ``module(ids (B, L) int64, mask (B, L) bool)`` returns
``{module_name: {task_name: prediction (B, C)}}`` with at least a ``"fused"`` entry
holding every task; other entries are auxiliary predictions with their own losses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

from torch import nn

from .groups import GroupSpec
from .hf import HF_LAYER_BLOCKS, build_hf, is_hf
from .red_heart import build_model
from .tasks import TaskSpec

Factory = Callable[..., tuple[nn.Module, GroupSpec]]


class ModelError(ValueError):
    """A --model factory that cannot be found or returns the wrong thing."""


def load_factory(target: str) -> Factory:
    """Import ``package.module:factory``."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"--model must look like package.module:factory, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"--model {target!r}: cannot import module {module_name!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"--model {target!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def build(
    target: str | None, preset: str, tasks: Sequence[TaskSpec], max_length: int,
    dropout: float | None = None, hf_layer_blocks: int | None = None,
    activation_checkpointing: bool = False,
) -> tuple[nn.Module, GroupSpec]:
    """The reference model (``target=None``; ``dropout`` overrides the preset's), a
    Hugging Face folder (``hf:<folder>``, its layers in ``hf_layer_blocks`` groups,
    ``HF_LAYER_BLOCKS`` by default) or the user's factory, checked."""
    if is_hf(target):
        model, spec = build_hf(target, tasks, hf_layer_blocks or HF_LAYER_BLOCKS)
        if activation_checkpointing:
            model.hf.gradient_checkpointing_enable()
        return model, spec
    if target is None:
        extra = {} if dropout is None else {"dropout": dropout}
        if activation_checkpointing:
            extra["activation_checkpointing"] = True
        model = build_model(preset, tasks, max_length=max_length, **extra)
        return model, model.group_spec
    if activation_checkpointing:
        raise ModelError(f"--activation-checkpointing: the --model factory {target!r} decides "
                         "its own (wrap its layers in torch.utils.checkpoint)")
    result = load_factory(target)(tasks=tuple(tasks), max_length=max_length)
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module)
            and isinstance(result[1], GroupSpec)):
        raise ModelError(f"--model {target!r}: the factory must return (torch.nn.Module, "
                         f"GroupSpec), got {type(result).__name__}")
    model, spec = result
    spec.partition(model)  # every tensor in exactly one group, or a clear error now
    return model, spec
