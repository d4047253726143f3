"""Labelled text data: the embedded kaomoji corpus and user JSON / JSONL files.

A dataset is a list of records (plain dicts with a text field and one field per
task) plus a :class:`TaskField` per task that says its kind and its classes.
Every problem a user can cause raises :class:`DataError` naming the file, the
row, the field and what was expected.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.tasks import TaskKind, TaskSpec
from model.tokenizer import ByteTokenizer
from model.training import EncodedData

from .session import atomic_write_bytes

logger = logging.getLogger(__name__)

EMBEDDED_SOURCE = "kaomoji-dataset"


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
                targets[f.name] = torch.tensor([index[v] for v in values], dtype=torch.long)
            elif f.kind == "multi":
                index = {c: i for i, c in enumerate(f.classes)}
                hot = torch.zeros(len(values), len(f.classes))
                for row, labels in enumerate(values):
                    hot[row, [index[v] for v in labels]] = 1.0
                targets[f.name] = hot
            else:
                targets[f.name] = torch.tensor(values, dtype=torch.float32).reshape(-1, 1)
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


# ----------------------------------------------------------------------------- embedded corpus

def _cache_path(version: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "redheart-tuner" / f"kaomoji-dataset-{version}.json"


@functools.lru_cache(maxsize=1)
def _embedded_rows() -> tuple[dict, ...]:
    """The categorized rows, from a compact cache of the four fields we use.

    kaomoji_dataset.all() parses every field of all 82,109 entries (names and keywords
    in six languages: ~6 s and ~650 MB here); the cache holds what we need and loads in
    a fraction of that. It is keyed by the package version and rebuilt if unreadable.
    """
    import kaomoji_dataset

    cache = _cache_path(kaomoji_dataset.__version__)
    try:
        return tuple(json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass  # no cache yet (or a damaged one): build it below
    rows = [
        {"text": r["text"], "label": r["category"], "intent": list(r.get("intent") or ()),
         "subject": list(r.get("subject") or ())}
        for r in kaomoji_dataset.all()
        if r.get("category") and r["category"] != "uncategorized"
    ]
    kaomoji_dataset._cache = None  # drop the package's 650 MB parse
    try:
        atomic_write_bytes(cache, json.dumps(rows, ensure_ascii=False).encode("utf-8"))
    except OSError as e:
        logger.info("could not cache the embedded corpus at %s: %s", cache, e.strerror)
    return tuple(rows)


def embedded_fields() -> tuple[TaskField, ...]:
    """Tasks of the embedded corpus; classes come from all its rows, not the sample."""
    rows = _embedded_rows()
    return (
        TaskField("emotion", "label", "single", tuple(sorted({r["label"] for r in rows}))),
        TaskField("intent", "intent", "multi", tuple(sorted({x for r in rows for x in r["intent"]}))),
        TaskField("subject", "subject", "multi",
                  tuple(sorted({x for r in rows for x in r["subject"]}))),
    )


def load_embedded(max_samples: int | None = 10_000, seed: int = 0) -> Dataset:
    """The kaomoji-dataset rows with a category other than "uncategorized" (CC-BY-4.0)."""
    rows = [dict(r) for r in _embedded_rows()]
    picked = sample(rows, max_samples, seed, EMBEDDED_SOURCE)
    logger.info("embedded corpus: %d of %d rows (seed %d)", len(picked), len(rows), seed)
    return Dataset(picked, embedded_fields(), EMBEDDED_SOURCE, "text", len(rows))


# ----------------------------------------------------------------------------- user files

def _read_rows(path: Path) -> list[tuple[str, Any]]:
    """(where, value) per row: where is "row i" or "row i (line j)"."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is accepted
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}: expected UTF-8 text") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a JSON list or JSON lines of objects")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson") or (
        path.suffix.lower() != ".json" and not text.lstrip().startswith("["))
    if not jsonl:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: "
                            f"{e.msg}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects at the top level, "
                            f"got {_type_name(data)}")
        return [(f"row {i}", v) for i, v in enumerate(data)]
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"row {len(rows)} (line {line_no})", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: row {len(rows)} (line {line_no}): not valid JSON at column "
                            f"{e.colno}: {e.msg}") from None
    return rows


def _type_name(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _value_class(v: Any) -> str | None:
    """The kind a single value implies: single / multi / regression / None (invalid)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, str | int):
        return "single"
    if isinstance(v, float):
        return "regression"
    if isinstance(v, list) and all(isinstance(x, str | int) and not isinstance(x, bool) for x in v):
        return "multi"
    return None


_EXPECT = {"single": "a string or integer label (single-label)",
           "multi": "a list of string or integer labels (multi-label)",
           "regression": "a number (regression)"}


def _infer_kind(path: Path, field: str, values: list[tuple[str, Any]], forced: str | None) -> str:
    classes = [(_value_class(v), where, v) for where, v in values]
    for cls, where, v in classes:
        if cls is None:
            raise DataError(f"{path}: {where}: field {field!r}: expected a string, integer, number "
                            f"or list of labels, got {_type_name(v)} {v!r}"[:300])
    kinds = {c for c, _, _ in classes}
    if forced is not None:
        kind = forced
    elif kinds == {"single", "regression"} and all(
            isinstance(v, int | float) for _, v in values):
        kind = "regression"  # integers mixed with floats: a numeric target
    else:
        kind = classes[0][0]
    for cls, where, v in classes:
        ok = cls == kind or (kind == "regression" and isinstance(v, int))
        if kind == "single" and isinstance(v, str) != isinstance(values[0][1], str):
            ok = False  # strings and integers mixed in one label field
        if not ok:
            raise DataError(f"{path}: {where}: field {field!r}: expected {_EXPECT[kind]} like "
                            f"{values[0][0]}, got {_type_name(v)} {v!r}"[:300])
    return kind


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _warn_control_characters(path: Path, rows: list, records: list[dict], text_field: str) -> None:
    """Control characters are kept (the byte tokenizer encodes them), but said."""
    hits = [where for (where, _), r in zip(rows, records, strict=True) if _CONTROL.search(r[text_field])]
    if hits:
        logger.warning("%s: %d rows hold control characters in field %r (first: %s); kept as bytes",
                       path, len(hits), text_field, hits[0])


def load_file(
    path: str | Path,
    text_field: str = "text",
    label_fields: Sequence[str] = ("label",),
    kinds: Mapping[str, str] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a JSON list or JSONL file of objects with ``text_field`` and ``label_fields``.

    Task kinds are inferred per field (string/int -> single-label, list -> multi-label,
    float -> regression) unless ``kinds`` names them. Task names are the field names.
    """
    path = Path(path)
    kinds = dict(kinds or {})
    for field, kind in kinds.items():
        if kind not in _EXPECT:
            raise DataError(f"task kind for field {field!r} must be one of {sorted(_EXPECT)}, "
                            f"got {kind!r}")
        if field not in label_fields:
            raise DataError(f"task kind given for {field!r}, which is not a label field "
                            f"{list(label_fields)!r}")
    if not label_fields:
        raise DataError("at least one label field is needed, got none")
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: holds no rows; expected at least one object")
    records: list[dict] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{path}: {where}: expected an object, got {_type_name(row)}")
        text = row.get(text_field)
        if text_field not in row:
            raise DataError(f"{path}: {where}: field {text_field!r} is missing; expected the text")
        if not isinstance(text, str):
            raise DataError(f"{path}: {where}: field {text_field!r}: expected a string, "
                            f"got {_type_name(text)}")
        if not text.strip():
            raise DataError(f"{path}: {where}: field {text_field!r}: the text is empty or blank")
        for f in label_fields:
            if f not in row:
                raise DataError(f"{path}: {where}: field {f!r} is missing; expected a label")
        records.append({text_field: text, **{f: row[f] for f in label_fields}})
    fields = []
    for f in label_fields:
        values = [(where, r[f]) for (where, _), r in zip(rows, records, strict=True)]
        kind = _infer_kind(path, f, values, kinds.get(f))
        if kind == "regression":
            classes: tuple = ()
            for r in records:
                r[f] = float(r[f])
        elif kind == "single":
            classes = tuple(sorted({r[f] for r in records}, key=lambda v: (str(type(v)), v)))
            if len(classes) < 2:
                raise DataError(f"{path}: field {f!r}: every row has the label {classes[0]!r}; "
                                "a single-label task needs at least 2 classes")
        else:
            classes = tuple(sorted({x for r in records for x in r[f]}, key=lambda v: (str(type(v)), v)))
            if not classes:
                raise DataError(f"{path}: field {f!r}: every label list is empty; "
                                "a multi-label task needs at least one label")
        fields.append(TaskField(f if f.isidentifier() else f"task_{len(fields)}", f, kind, classes))
    _warn_control_characters(path, rows, records, text_field)
    picked = sample(records, max_samples, seed, str(path))
    logger.info("%s: %d of %d rows; tasks %s", path, len(picked), len(records),
                ", ".join(f"{t.name} ({t.kind}, {len(t.classes)})" for t in fields))
    return Dataset(picked, tuple(fields), str(path), text_field, len(records))
