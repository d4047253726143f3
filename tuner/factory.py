"""The model and its tokenizer, built from a run's config: one place that knows how a
preset, a ``--model`` factory or an ``hf:`` folder becomes a model, a tokenizer and an
input length."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from model import ByteTokenizer, GroupSpec, preset_config
from model.groups import load_groups_file, with_groups
from model.hf import is_hf, load_tokenizer, max_positions
from model.plugin import build
from model.tasks import TaskSpec

if TYPE_CHECKING:  # predicting needs the factory, not the pipeline's settings
    from .config import PipelineConfig


def model_builder(cfg: PipelineConfig, tasks: tuple[TaskSpec, ...], max_length: int):
    """Model factory with fixed initial weights: every call returns the same model and its
    module groups (``--groups`` replaces the model's own)."""
    groups = load_groups_file(cfg.groups_file) if cfg.groups_file else None

    def build_fn():
        torch.manual_seed(cfg.train.seed)
        model, spec = build(cfg.model, cfg.preset, tasks, max_length, cfg.dropout,
                            cfg.hf_layer_blocks, bool(cfg.activation_checkpointing))
        if groups is not None:
            spec = with_groups(spec, groups)
            try:
                spec.partition(model)
            except ValueError as e:
                raise ValueError(f"--groups {cfg.groups_file}: {e}") from None
        return model, spec
    return build_fn


def model_max_length(preset: str, model: str | None, max_length: int | None) -> int:
    """The encoder's input length: given, else the preset's (64 bytes for a --model, 64
    tokens for hf: or its position limit if lower)."""
    if max_length is not None:
        return max_length
    if is_hf(model):
        limit = max_positions(model)
        return min(64, limit) if limit else 64
    return preset_config(preset).max_length if model is None else 64


def config_max_length(cfg: PipelineConfig) -> int:
    """``model_max_length`` of a run's config."""
    return model_max_length(cfg.preset, cfg.model, cfg.max_length)


def make_tokenizer(model: str | None, max_length: int):
    """Bytes for our presets and factories; the model's own tokenizer for hf:."""
    return load_tokenizer(model, max_length) if is_hf(model) else ByteTokenizer(max_length)


def group_summary(model: torch.nn.Module, spec: GroupSpec) -> dict[str, dict]:
    """Each module group's prefixes and parameter count, in group order."""
    counts = {g: sum(p.numel() for _, p in spec.named_parameters_of(model, g)) for g in spec.groups}
    return {g: {"prefixes": list(spec.groups[g]), "parameters": counts[g],
                "own_loss": list(spec.group_losses.get(g, ())) or None,
                "independent": g in spec.independent} for g in spec.groups}


__all__ = ["config_max_length", "group_summary", "make_tokenizer", "model_builder",
           "model_max_length"]
