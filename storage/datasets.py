"""Labelled text data as records and tasks, whatever its source: the embedded corpus
(``storage.corpus``) or a user's files (``storage.files``).

A dataset is a list of records (plain dicts with a text field and one field per
task) plus a :class:`TaskField` per task that says its kind and its classes.
Every problem a user can cause raises :class:`DataError` naming the file, the
row, the field and what was expected.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from model.data import EncodedData
from model.tasks import TaskKind, TaskSpec
from model.tokenizer import ByteTokenizer

logger = logging.getLogger(__name__)

class DataError(ValueError):
    """Bad input data: the message names the file, row and field, and what was expected."""


@dataclass(frozen=True)
class TaskField:
    """One task read from one record field. ``classes`` is empty for regression."""

    name: str
    field: str
    kind: TaskKind
    classes: tuple = ()

    @property
    def spec(self) -> TaskSpec:
        n = 1 if self.kind == "regression" else len(self.classes)
        return TaskSpec(self.name, self.kind, n)


@dataclass
class Dataset:
    records: list[dict]
    fields: tuple[TaskField, ...]
    source: str
    text_field: str = "text"
    total_rows: int = 0  # rows available before sampling
    # Splits the user gave (a data folder): records by split name; None: phase 0 splits.
    splits: dict[str, list[dict]] | None = None

    @property
    def tasks(self) -> tuple[TaskSpec, ...]:
        return tuple(f.spec for f in self.fields)

    def encode(self, records: Sequence[Mapping], tokenizer: ByteTokenizer) -> EncodedData:
        """Tensors of ``records``: ids/mask (N, L) and one target tensor per task."""
        ids, mask = tokenizer.encode_batch([r[self.text_field] for r in records])
        targets: dict[str, torch.Tensor] = {}
        for f in self.fields:
            values = [r[f.field] for r in records]
            if f.kind == "single":
                index = {c: i for i, c in enumerate(f.classes)}
                targets[f.name] = torch.tensor([index[v] for v in values], dtype=torch.long,
                                               device="cpu")
            elif f.kind == "multi":
                index = {c: i for i, c in enumerate(f.classes)}
                hot = torch.zeros(len(values), len(f.classes), device="cpu")
                for row, labels in enumerate(values):
                    hot[row, [index[v] for v in labels]] = 1.0
                targets[f.name] = hot
            else:
                targets[f.name] = torch.tensor(values, dtype=torch.float32,
                                               device="cpu").reshape(-1, 1)
        return EncodedData(ids, mask, targets)


def sample(records: list[dict], max_samples: int | None, seed: int, source: str) -> list[dict]:
    """A seeded sample of ``max_samples`` rows, kept in input order."""
    if max_samples is not None and max_samples < 1:
        raise DataError(f"--max-samples must be >= 1, got {max_samples!r}")
    if max_samples is None or max_samples >= len(records):
        if max_samples is not None:
            logger.warning("%s has %d rows, fewer than --max-samples %d: using all of them",
                           source, len(records), max_samples)
        return list(records)
    keep = sorted(random.Random(seed).sample(range(len(records)), max_samples))
    return [records[i] for i in keep]


__all__ = ["DataError", "Dataset", "TaskField", "sample"]
