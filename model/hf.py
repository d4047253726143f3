"""Hugging Face models from a local folder: ``--model hf:<folder>``.

The folder is anything ``save_pretrained`` wrote (a config and weights, and the
tokenizer's files). It is loaded with ``AutoModelForSequenceClassification`` and
``AutoTokenizer``, never from the hub. A sequence-classification model has one head, so it
trains one task (the pipeline passes the primary one). Module groups come from the
architecture's own parameter names (``derive_groups``): what lies below the encoder's
layer list (embeddings), the layers in K contiguous blocks, and what lies above them
(pooler, classifier head); the layer order gives layer-wise LR decay.
``transformers`` is an optional extra: ``pip install -e '.[hf]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .groups import GroupSpec
from .tasks import TaskSpec

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
PROBLEM_TYPES = {"single": "single_label_classification",
                 "multi": "multi_label_classification", "regression": "regression"}


class HFModelError(ValueError):
    """A hf: folder that cannot be loaded, or a model whose layers cannot be found."""


def is_hf(target: str | None) -> bool:
    return target is not None and target.startswith(HF_PREFIX)


def hf_folder(target: str) -> Path:
    """The folder of ``hf:<folder>``, checked to hold a saved model."""
    folder = Path(target[len(HF_PREFIX):]).expanduser()
    if not folder.is_dir():
        raise HFModelError(f"--model {target}: no such folder {folder}")
    if not (folder / "config.json").is_file():
        raise HFModelError(f"--model {target}: {folder} holds no config.json; expected a folder "
                           "that a transformers model's save_pretrained wrote")
    return folder


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise HFModelError("--model hf:... needs transformers: pip install -e '.[hf]'") from None
    transformers.logging.set_verbosity_error()  # the load report and its progress bar
    transformers.utils.logging.disable_progress_bar()
    return transformers


class HFTextClassifier(nn.Module):
    """A sequence-classification model in the pipeline's output format:
    ``forward(ids (B, L), mask (B, L) bool) -> {"fused": {task: logits (B, C)}}``."""

    def __init__(self, hf: nn.Module, task: TaskSpec) -> None:
        super().__init__()
        self.hf = hf
        self.task = task.name

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        logits = self.hf(input_ids=ids, attention_mask=mask.long()).logits  # (B, C)
        return {"fused": {self.task: logits}}


@dataclass(frozen=True)
class HFTokenizer:
    """The model's own tokenizer, padded (right) and truncated to ``max_length`` tokens."""

    tokenizer: Any
    max_length: int

    def encode_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (N, max_length) int64 and mask (N, max_length) bool."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].bool()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]


def load_tokenizer(target: str, max_length: int) -> HFTokenizer:
    folder = hf_folder(target)
    tokenizer = _transformers().AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.padding_side != "right":
        tokenizer.padding_side = "right"  # the batches are cut to their longest row's mask
    return HFTokenizer(tokenizer, max_length)


def max_positions(target: str) -> int | None:
    """The model's position limit (``max_position_embeddings``), if its config has one."""
    config = _transformers().AutoConfig.from_pretrained(hf_folder(target), local_files_only=True)
    return getattr(config, "max_position_embeddings", None)


def find_layers(model: nn.Module) -> tuple[str, int]:
    """(state-dict path, length) of the encoder's layer list: the longest ``nn.ModuleList``
    whose entries are all of one class (BERT's ``encoder.layer``, DistilBERT's
    ``transformer.layer``, ...). Raises HFModelError when there is none."""
    best: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if best is None or len(module) > best[1]:
            best = (name, len(module))
    if best is None:
        raise HFModelError(f"{type(model).__name__}: no list of same-class layers found "
                           "(expected an encoder with a ModuleList of blocks); give the groups "
                           "with --groups FILE")
    return best


def derive_groups(model: nn.Module, blocks: int) -> GroupSpec:
    """Groups from the architecture's names: ``embeddings`` (every tensor before the layer
    list), ``layers_XX_YY`` (``blocks`` contiguous runs of layers) and ``head`` (every tensor
    after it), with the layers for LLRD."""
    if blocks < 1:
        raise ValueError(f"--hf-layer-blocks must be >= 1, got {blocks!r}")
    path, n = find_layers(model)
    layer_prefixes = tuple(f"{path}.{i}." for i in range(n))
    names = list(model.state_dict())
    in_layers = [any(k.startswith(p) for p in layer_prefixes) for k in names]
    first, last = in_layers.index(True), len(in_layers) - 1 - in_layers[::-1].index(True)

    def prefix(key: str) -> str:
        # The owning module's prefix, unless it also holds the layers (then the key itself).
        owner = key.rsplit(".", 1)[0] + "."
        return key if any(p.startswith(owner) for p in layer_prefixes) else owner

    below = tuple(dict.fromkeys(prefix(k) for k, inside in zip(names[:first], in_layers[:first],
                                                               strict=True) if not inside))
    above = tuple(dict.fromkeys(prefix(k) for i, k in enumerate(names)
                                if not in_layers[i] and i > first))
    if any(not inside for inside in in_layers[first:last + 1]):
        logger.info("tensors between the layers (%s) go to the head group",
                    [k for k, inside in zip(names[first:last + 1], in_layers[first:last + 1],
                                            strict=True) if not inside][:3])
    k = min(blocks, n)
    groups: dict[str, tuple[str, ...]] = {}
    if below:
        groups["embeddings"] = below
    for b in range(k):
        lo, hi = b * n // k, (b + 1) * n // k - 1
        groups[f"layers_{lo:02d}_{hi:02d}"] = layer_prefixes[lo:hi + 1]
    if above:
        groups["head"] = above
    return GroupSpec(groups=groups, layers=layer_prefixes, below_layers=below)


HF_LAYER_BLOCKS = 4  # an hf: model's encoder layers are grouped into this many groups


def build_hf(target: str, tasks: Sequence[TaskSpec], blocks: int = HF_LAYER_BLOCKS,
             ) -> tuple[HFTextClassifier, GroupSpec]:
    """The model of ``hf:<folder>`` with a head for ``tasks[0]``, and its groups."""
    folder = hf_folder(target)
    task = tasks[0]
    transformers = _transformers()
    try:
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=task.num_outputs, problem_type=PROBLEM_TYPES[task.kind],
            ignore_mismatched_sizes=True, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise HFModelError(f"--model {target}: cannot load a sequence-classification model "
                           f"from {folder}: {e}") from None
    model = HFTextClassifier(hf, task)
    spec = derive_groups(model, blocks)
    return model, spec


def save_pretrained_folder(model: HFTextClassifier, tokenizer: HFTokenizer,
                           classes: Sequence[Any], folder: Path) -> None:
    """The model (with its class names as ``id2label``) and tokenizer as a folder that
    ``from_pretrained`` loads."""
    config = model.hf.config
    if classes:
        config.id2label = {i: str(c) for i, c in enumerate(classes)}
        config.label2id = {str(c): i for i, c in enumerate(classes)}
    model.hf.save_pretrained(folder)
    tokenizer.tokenizer.save_pretrained(folder)


__all__ = ["HF_PREFIX", "HFModelError", "HFTextClassifier", "HFTokenizer", "build_hf",
           "derive_groups", "find_layers", "is_hf", "load_tokenizer", "save_pretrained_folder"]
