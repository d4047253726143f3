"""A user's labelled texts: a JSON list, JSONL, CSV, TSV or Parquet file, or a folder of
train/validation/test files that are the splits. Every problem a user can cause raises
:class:`~storage.datasets.DataError` naming the file, the row, the field and what was
expected."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .datasets import DataError, Dataset, TaskField, sample

logger = logging.getLogger(__name__)


TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_text(path: Path, expected: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is accepted
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte {e.start}: expected UTF-8 text") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected {expected}")
    return text


def _read_table(path: Path, delimiter: str) -> list[tuple[str, Any]]:
    """CSV/TSV rows as (where, {column: cell string}); quoted cells may hold newlines."""
    text = _read_text(path, "a header row and rows of labelled texts")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[str, Any]] = []
    try:
        header = next(reader)
        if len(set(header)) != len(header):
            dupes = sorted({c for c in header if header.count(c) > 1})
            raise DataError(f"{path}: the header names columns {dupes} more than once")
        start = reader.line_num + 1
        for cells in reader:
            where = f"row {len(rows)} (line {start})"
            start = reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(f"{path}: {where}: {len(cells)} cells, expected {len(header)} "
                                f"like the header ({', '.join(header)})")
            rows.append((where, dict(zip(header, cells, strict=True))))
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: not valid "
                        f"{'TSV' if delimiter == chr(9) else 'CSV'}: {e}") from None
    return rows


def _read_parquet(path: Path) -> list[tuple[str, Any]]:
    """Parquet rows as (where, {column: value}) with their own types (lists stay lists)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install -e '.[parquet]'") from None
    try:
        table = pq.read_table(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read as Parquet: {e}") from None
    except Exception as e:  # pyarrow reports a damaged file as ArrowInvalid
        raise DataError(f"{path}: not a valid Parquet file: {e}") from None
    return [(f"row {i}", row) for i, row in enumerate(table.to_pylist())]


def _cell_labels(path: Path, where: str, field: str, cell: str, kind: str | None,
                 separator: str | None) -> Any:
    """A CSV label cell as the value the JSON loader would have read: a JSON list cell
    becomes a list, a regression cell a number, a separated cell of a multi-label column
    a list; anything else stays a string."""
    stripped = cell.strip()
    if kind == "regression":
        try:
            return float(stripped)
        except ValueError:
            raise DataError(f"{path}: {where}: column {field!r}: expected a number (regression), "
                            f"got {cell!r}"[:300]) from None
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: {where}: column {field!r}: a cell that starts with '[' must "
                            f"be a JSON list of labels: {e.msg} at column {e.colno}") from None
        return value
    if kind == "multi":
        if not stripped:
            return []  # a row without labels
        if separator is None:
            raise DataError(f"{path}: {where}: column {field!r}: expected a JSON list of labels "
                            f"like [\"a\", \"b\"], got {cell!r}; or give --label-separator"[:300])
        return [x.strip() for x in cell.split(separator) if x.strip()]
    if not stripped:
        raise DataError(f"{path}: {where}: column {field!r} is empty; expected a label")
    return cell


def _numeric_column(values: list[Any]) -> bool:
    try:
        [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    return True


def _json_value(text: str) -> Any:
    """``json.loads``, with the two ways it fails other than a syntax error said as one
    ``ValueError`` line: nesting deeper than Python's recursion limit (a RecursionError) and
    an integer of more than 4,300 digits (Python's limit on int-string conversion)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("the JSON nests lists or objects too deeply (more than about "
                         f"{sys.getrecursionlimit()} levels); expected rows of labelled "
                         "texts") from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise ValueError(f"not valid JSON for this reader: {e}".split("; use ")[0]) from None


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    """(where, value) per row: where is "row i" or "row i (line j)"."""
    text = _read_text(path, "a JSON list or JSON lines of objects")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson") or (
        path.suffix.lower() != ".json" and not text.lstrip().startswith("["))
    if not jsonl:
        try:
            data = _json_value(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: "
                            f"{e.msg}") from None
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects at the top level, "
                            f"got {_type_name(data)}")
        return [(f"row {i}", v) for i, v in enumerate(data)]
    rows = []
    # Lines end at "\n" only (JSON Lines): str.splitlines would also cut at U+2028, U+0085
    # and other separators that JSON strings may hold unescaped.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"row {len(rows)} (line {line_no})", _json_value(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: row {len(rows)} (line {line_no}): not valid JSON at column "
                            f"{e.colno}: {e.msg}") from None
        except ValueError as e:
            raise DataError(f"{path}: row {len(rows)} (line {line_no}): {e}") from None
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


def _typed_cells(path: Path, rows: list[tuple[str, Any]], text_field: str,
                 label_fields: Sequence[str], kinds: Mapping[str, str],
                 separator: str | None) -> list[tuple[str, Any]]:
    """CSV/TSV rows with their label cells read as labels, lists or numbers."""
    columns = set(rows[0][1])
    for f in (text_field, *label_fields):
        if f not in columns:
            raise DataError(f"{path}: the header has no column {f!r}; it has "
                            f"{', '.join(sorted(columns))}")
    kinds = dict(kinds)
    for f in label_fields:
        cells = [row[f].strip() for _, row in rows]
        if f not in kinds and _numeric_column(cells) and any("." in c or "e" in c.lower()
                                                            for c in cells):
            kinds[f] = "regression"  # numbers with a fraction: a numeric target
            logger.info("%s: column %r holds numbers with fractions: read as a regression "
                        "target (--task-kind %s=single to read it as classes)", path, f, f)
        elif f not in kinds and _numeric_column(cells) and len(set(cells)) > 20:
            logger.warning("%s: column %r holds %d distinct whole numbers, read as classes; if it "
                           "is a numeric target, say --task-kind %s=regression", path, f,
                           len(set(cells)), f)
    out = []
    for where, row in rows:
        typed = dict(row)
        for f in label_fields:
            typed[f] = _cell_labels(path, where, f, row[f], kinds.get(f), separator)
        out.append((where, typed))
    return out


SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid", "dev"),
               "test": ("test",)}


def _check_kinds(kinds: Mapping[str, str], label_fields: Sequence[str],
                 label_separator: str | None) -> None:
    for field, kind in kinds.items():
        if kind not in _EXPECT:
            raise DataError(f"task kind for field {field!r} must be one of {sorted(_EXPECT)}, "
                            f"got {kind!r}")
        if field not in label_fields:
            raise DataError(f"task kind given for {field!r}, which is not a label field "
                            f"{list(label_fields)!r}")
    if not label_fields:
        raise DataError("at least one label field is needed, got none")
    if label_separator is not None and not label_separator:
        raise DataError("--label-separator must not be empty")


def _file_records(path: Path, text_field: str, label_fields: Sequence[str],
                  kinds: Mapping[str, str], label_separator: str | None,
                  ) -> tuple[list[tuple[str, Any]], list[dict]]:
    """One file's rows, checked: (where, raw row) and the record kept of each."""
    rows = _read_any(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        rows = _typed_cells(path, rows, text_field, label_fields, kinds, label_separator)
    elif label_separator is not None:
        for _, row in rows:  # a separated string in a multi-label field of JSON/Parquet
            for f in label_fields:
                if kinds.get(f) == "multi" and isinstance(row, dict) and isinstance(row.get(f), str):
                    row[f] = [x.strip() for x in row[f].split(label_separator) if x.strip()]
    records: list[dict] = []
    for where, row in rows:
        text = _text_of(path, where, row, text_field)
        if not text.strip():
            raise DataError(f"{path}: {where}: field {text_field!r}: the text is empty or blank")
        for f in label_fields:
            if f not in row:
                raise DataError(f"{path}: {where}: field {f!r} is missing; expected a label")
            _check_encodable(path, where, f, row[f])
        records.append({text_field: text, **{f: row[f] for f in label_fields}})
    _warn_control_characters(path, rows, records, text_field)
    return rows, records


def _task_fields(path: Path, rows: list[tuple[str, Any]], records: list[dict],
                 label_fields: Sequence[str], kinds: Mapping[str, str]) -> tuple[TaskField, ...]:
    """Each label field's kind and classes over all ``records`` (converted in place)."""
    fields = []
    for f in label_fields:
        values = [(where, r[f]) for (where, _), r in zip(rows, records, strict=True)]
        kind = _infer_kind(path, f, values, kinds.get(f))
        if kind == "regression":
            classes: tuple = ()
            for (where, _), r in zip(rows, records, strict=True):
                try:
                    r[f] = float(r[f])
                except OverflowError:
                    r[f] = math.inf
                if not math.isfinite(r[f]):
                    raise DataError(f"{path}: {where}: field {f!r}: expected a finite number "
                                    f"(regression), got {r[f]!r}")
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
    return tuple(fields)


def _read_any(path: Path) -> list[tuple[str, Any]]:
    """(where, row) of any file ``load_file`` reads, by its suffix; at least one row."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        rows = _read_table(path, TABLE_SUFFIXES[suffix])
    elif suffix in PARQUET_SUFFIXES:
        rows = _read_parquet(path)
    else:
        rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: holds no rows; expected at least one object")
    return rows


def _text_of(path: Path, where: str, row: Any, text_field: str) -> str:
    """The text of one row, or a DataError naming the file, row and field."""
    if not isinstance(row, dict):
        raise DataError(f"{path}: {where}: expected an object, got {_type_name(row)}")
    if text_field not in row:
        raise DataError(f"{path}: {where}: field {text_field!r} is missing; expected the text")
    if not isinstance(row[text_field], str):
        raise DataError(f"{path}: {where}: field {text_field!r}: expected a string, "
                        f"got {_type_name(row[text_field])}")
    _check_encodable(path, where, text_field, row[text_field])
    return row[text_field]


def _check_encodable(path: Path, where: str, field: str, value: Any) -> None:
    """A string (or the strings of a list) that UTF-8 can hold: JSON's \\ud800 escapes
    decode to lone surrogates, which no later step (hashing, the tokenizer) can encode."""
    for v in value if isinstance(value, list) else [value]:
        if not isinstance(v, str):
            continue
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataError(f"{path}: {where}: field {field!r}: holds a lone surrogate "
                            f"({v[e.start]!r} at character {e.start}); expected text that UTF-8 "
                            "can encode") from None


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """The texts of a data file (any format ``load_file`` reads; other fields ignored),
    with the same errors naming file, row and field."""
    path = Path(path)
    return [_text_of(path, where, row, text_field) for where, row in _read_any(path)]


def split_files(folder: Path) -> dict[str, Path]:
    """The train / validation / test files of a folder (``train.csv``, ``validation.jsonl``,
    ``val.parquet``, ...): train and validation are required, test is optional."""
    suffixes = (".json", ".jsonl", ".ndjson", *TABLE_SUFFIXES, *PARQUET_SUFFIXES)
    found: dict[str, Path] = {}
    for split, names in SPLIT_NAMES.items():
        hits = [p for p in sorted(folder.iterdir())
                if p.is_file() and p.stem.lower() in names and p.suffix.lower() in suffixes]
        if len(hits) > 1:
            raise DataError(f"{folder}: more than one {split} file: {', '.join(p.name for p in hits)}")
        if hits:
            found[split] = hits[0]
    for split in ("train", "val"):
        if split not in found:
            raise DataError(f"{folder}: no {SPLIT_NAMES[split][0]} file; a data folder holds "
                            f"train.<ext>, validation.<ext> and optionally test.<ext> (ext: "
                            f"{', '.join(s.lstrip('.') for s in suffixes)})")
    return found


def load_file(
    path: str | Path,
    text_field: str = "text",
    label_fields: Sequence[str] = ("label",),
    kinds: Mapping[str, str] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    label_separator: str | None = None,
) -> Dataset:
    """Load a JSON list, JSONL, CSV, TSV or Parquet file of rows with ``text_field`` and
    ``label_fields``, or a folder of such files that are the train / validation / test
    splits (``split_files``; ``Dataset.splits`` then holds them and ``max_samples``
    samples the train file only).

    Task kinds are inferred per field (string/int -> single-label, list -> multi-label,
    float -> regression) unless ``kinds`` names them. Task names are the field names.
    CSV/TSV cells are strings: a cell holding a JSON list is a multi-label list, a column
    given as ``multi`` is split on ``label_separator``, one given as ``regression`` is read
    as numbers (a column of numbers with a decimal point is inferred as regression).
    """
    path = Path(path)
    kinds = dict(kinds or {})
    _check_kinds(kinds, label_fields, label_separator)
    if path.is_dir():
        return _load_folder(path, text_field, label_fields, kinds, max_samples, seed,
                            label_separator)
    rows, records = _file_records(path, text_field, label_fields, kinds, label_separator)
    fields = _task_fields(path, rows, records, label_fields, kinds)
    picked = sample(records, max_samples, seed, str(path))
    logger.info("%s: %d of %d rows; tasks %s", path, len(picked), len(records),
                ", ".join(f"{t.name} ({t.kind}, {len(t.classes)})" for t in fields))
    return Dataset(picked, fields, str(path), text_field, len(records))


def _load_folder(folder: Path, text_field: str, label_fields: Sequence[str],
                 kinds: Mapping[str, str], max_samples: int | None, seed: int,
                 label_separator: str | None) -> Dataset:
    files = split_files(folder)
    rows: list[tuple[str, Any]] = []
    records: list[dict] = []
    parts: dict[str, list[dict]] = {}
    for split, path in files.items():
        r, recs = _file_records(path, text_field, label_fields, kinds, label_separator)
        rows += [(f"{path.name} {where}", row) for where, row in r]
        records += recs
        parts[split] = recs
    # Kinds and classes over every split, so a class seen only in test still has an index.
    fields = _task_fields(folder, rows, records, label_fields, kinds)
    total = sum(len(v) for v in parts.values())
    parts["train"] = sample(parts["train"], max_samples, seed, str(files["train"]))
    picked = [r for split in ("train", "val", "test") for r in parts.get(split, [])]
    logger.info("%s: the given splits: %s; tasks %s", folder,
                ", ".join(f"{k} {len(v)} rows ({files[k].name})" for k, v in parts.items()),
                ", ".join(f"{t.name} ({t.kind}, {len(t.classes)})" for t in fields))
    dataset = Dataset(picked, fields, str(folder), text_field, total)
    dataset.splits = {k: v for k, v in parts.items()}
    return dataset


__all__ = ["PARQUET_SUFFIXES", "SPLIT_NAMES", "TABLE_SUFFIXES", "load_file", "read_texts",
           "split_files"]
