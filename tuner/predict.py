"""Use what was trained: a session's final model on new texts.

``load_predictor(session)`` rebuilds the model the session trained (the preset, a
``--model`` factory, with the settings it recorded) with its tasks and classes from
``preprocessing/data_summary.json``, and loads ``final/optimal_crossover_model.safetensors``;
``predict`` runs it over texts in batches and returns, per text and task, the label and
the probabilities (single-label), the labels above 0.5 and every probability
(multi-label), or the value (regression): the decisions ``evaluate`` scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from model import ByteTokenizer, GroupSpec
from model.data import EncodedData, batch_indices
from model.hf import HFTokenizer
from model.plugin import build
from storage import TaskField, read_json

from .factory import make_tokenizer, model_max_length
from .final import FINAL_MODEL, load_final_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictor:
    """A session's final model, ready to predict: the model (eval mode, on ``device``)
    and its groups, its tasks with their classes, and the tokenizer it was trained with."""

    model: nn.Module
    spec: GroupSpec
    fields: tuple[TaskField, ...]
    tokenizer: ByteTokenizer | HFTokenizer
    text_field: str
    device: torch.device


def load_predictor(session: str | Path, device: str = "cpu") -> Predictor:
    """The final model of the session folder ``session`` (``<backup-dir>/<study>``)."""
    root = Path(session)
    for needed in ("settings.json", "preprocessing/data_summary.json", FINAL_MODEL):
        if not (root / needed).is_file():
            raise ValueError(f"{root}: no {needed}; expected the folder of a session whose "
                             "run finished phase 4 (<backup-dir>/<study>)")
    settings = read_json(root / "settings.json")["settings"]
    summary = read_json(root / "preprocessing" / "data_summary.json")
    fields = tuple(TaskField(t["name"], t["field"], t["kind"], tuple(t["classes"]))
                   for t in summary["tasks"])
    max_length = model_max_length(settings["preset"], settings["model"], settings["max_length"])
    model, spec = build(settings["model"], settings["preset"], tuple(f.spec for f in fields),
                     max_length, settings.get("dropout"), settings.get("hf_layer_blocks"))
    load_final_model(model, root)
    where = torch.device(device)
    model.to(where).eval()
    logger.info("%s: final model loaded (%s, tasks %s)", root,
                settings["model"] or f"RedHeart {settings['preset']}",
                ", ".join(f.name for f in fields))
    return Predictor(model, spec, fields, make_tokenizer(settings["model"], max_length),
                     settings["text_field"], where)


def _decide(field: TaskField, out: torch.Tensor) -> list[dict[str, Any]]:
    """One task's outputs (B, C) as a dict per row."""
    out = out.float().cpu()
    if field.kind == "regression":
        return [{"value": float(v)} for v in out[:, 0]]
    if field.kind == "single":
        probs = out.softmax(-1)
        return [{"label": field.classes[int(p.argmax())],
                 "probabilities": {str(c): float(x) for c, x in zip(field.classes, p, strict=True)}}
                for p in probs]
    probs = out.sigmoid()
    return [{"labels": [field.classes[i] for i in range(len(field.classes)) if logit[i] > 0],
             "probabilities": {str(c): float(x) for c, x in zip(field.classes, p, strict=True)}}
            for logit, p in zip(out, probs, strict=True)]


@torch.no_grad()
def predict(predictor: Predictor, texts: Sequence[str], batch_size: int = 256,
            progress: bool = True) -> list[dict[str, dict[str, Any]]]:
    """Per text: task name -> its prediction (see the module doc)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    ids, mask = predictor.tokenizer.encode_batch(list(texts))
    data = EncodedData(ids, mask, {})
    rows: list[dict[str, dict[str, Any]]] = []
    batches = list(batch_indices(len(data), batch_size, None))
    for index in tqdm(batches, desc="predict", unit="batch", disable=not progress):
        b_ids, b_mask, _ = data.batch(index, predictor.device)  # (B, L_b), cut to the longest
        fused = predictor.model(b_ids, b_mask)["fused"]
        per_task = {f.name: _decide(f, fused[f.name]) for f in predictor.fields}
        rows += [{name: per_task[name][i] for name in per_task} for i in range(len(index))]
    return rows


__all__ = ["Predictor", "load_predictor", "predict"]
