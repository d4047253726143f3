"""Fuzz every reader a user's file reaches, in process, with Hypothesis.

    python bench/fuzz_readers.py --examples 1200     # per reader: 9 x 1,200 = 10,800 inputs

Readers: a JSON list, JSON lines, CSV, TSV and Parquet data file (``storage.load_file``), a
split folder (train / validation / test files), ``predict``'s input (``storage.read_texts``),
the TOML ``--config`` (``run_study.parse_config``) and the ``--groups`` file
(``model.load_groups_file``). Each input is a valid file with one thing wrong, drawn by a
structure-aware strategy (a ragged row, a wrong type, a missing or extra field or column, a
huge field, a NUL, a lone surrogate, NaN, deep nesting, a huge integer, another encoding or a
BOM, a truncated or empty file, random bytes), or a valid file. The contract (``check``): the
reader returns data that the pipeline can use (texts that encode to UTF-8 and tokenize,
finite regression targets), or raises a ``ValueError`` of one line that names the file;
never another exception. Prints, per reader, the inputs tried, accepted and refused, and
each kind of input's counts; exits 1 on the first input that breaks the contract (Hypothesis
prints it, shrunk). ``tests/storage/test_fuzz_readers.py`` runs the same checks with fewer
examples and a fixed seed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA_READERS = ("json", "jsonl", "csv", "tsv", "parquet")
READERS = (*DATA_READERS, "folder", "predict", "config", "groups")


@dataclass(frozen=True)
class Case:
    """Files to write (name -> bytes) and what is wrong with them ("valid" when nothing)."""

    files: tuple[tuple[str, bytes], ...]
    what: str


# -- values ----------------------------------------------------------------------------------

_texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30).filter(
    str.strip)
_labels = st.sampled_from(["pos", "neg", "mixed", "ｶｵﾓｼﾞ", "a b"])
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True), _texts)
_any_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_texts, inner, max_size=3)), max_leaves=6)

# One thing wrong with one row (or nothing): (name, row -> row) on a dict row.
_ROW_FAULTS = ("valid", "wrong type", "missing field", "extra field", "huge field", "NUL",
               "lone surrogate", "non-finite number", "huge integer", "not an object",
               "multi-label list", "number label", "regression labels")


@st.composite
def _rows(draw, faults: tuple[str, ...] = _ROW_FAULTS) -> tuple[list, str]:
    """Valid rows (two labels at least) with one row broken by a drawn fault."""
    rows = [{"text": "first row", "label": "pos"}, {"text": "second row", "label": "neg"}]
    rows += draw(st.lists(st.fixed_dictionaries({"text": _texts, "label": _labels}),
                          max_size=6))
    fault = draw(st.sampled_from(faults))
    i = draw(st.integers(0, len(rows) - 1))
    field = draw(st.sampled_from(["text", "label"]))
    row = dict(rows[i])
    if fault == "wrong type":
        row[field] = draw(_any_json)
    elif fault == "missing field":
        del row[field]
    elif fault == "extra field":
        row[draw(_texts)] = draw(_any_json)
    elif fault == "huge field":
        row[field] = "x" * draw(st.sampled_from([131_073, 300_000]))
    elif fault == "NUL":
        row["text"] = row["text"] + "\x00" + draw(_texts)
    elif fault == "lone surrogate":
        row[field] = "ok \ud800 text"
    elif fault == "non-finite number":
        row["label"] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif fault == "huge integer":
        row["label"] = 10 ** draw(st.sampled_from([30, 4000]))  # JSON writes up to 4,300 digits
    elif fault == "multi-label list":
        rows = [{**r, "label": [r["label"]]} for r in rows]
        row = {**row, "label": draw(st.lists(_labels, max_size=3))}
    elif fault == "number label":
        row["label"] = draw(st.floats(-5, 5, allow_nan=False))
    elif fault == "regression labels":
        rows = [{**r, "label": draw(st.floats(-1e300, 1e300, allow_nan=False))} for r in rows]
        row = {**rows[i], "label": draw(st.floats())}          # sometimes NaN or infinite
    rows[i] = row
    if fault == "not an object":
        rows[i] = draw(st.one_of(_scalars, st.lists(_scalars, max_size=2)))
    return rows, fault


# -- writers ---------------------------------------------------------------------------------

def _json(rows: list, draw) -> bytes:
    return json.dumps(rows, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


def _jsonl(rows: list, draw) -> bytes:
    ascii_ = draw(st.booleans())
    return "\n".join(json.dumps(r, ensure_ascii=ascii_) for r in rows).encode(
        "utf-8", "surrogatepass")


def _cell(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


TABLE_FAULTS = ("as written", "ragged line", "dropped column", "same column twice", "open quote",
                "other delimiter")


def _table(rows: list, draw, delimiter: str, faulty: bool = False) -> tuple[bytes, str]:
    columns = ["text", "label"]
    for r in rows:
        if isinstance(r, dict):
            columns += [k for k in r if k not in columns]
    out = io.StringIO(newline="")
    w = csv.writer(out, delimiter=delimiter)
    w.writerow(columns)
    for r in rows:
        if isinstance(r, dict):
            w.writerow([_cell(r[c]) if c in r else "" for c in columns])
        else:
            w.writerow([_cell(r)])                        # a row of one cell: ragged
    text = out.getvalue()
    fault = draw(st.sampled_from(TABLE_FAULTS)) if faulty else "as written"
    lines = text.split("\r\n")
    if fault == "ragged line" and len(lines) > 2:
        k = draw(st.integers(1, len(lines) - 2))
        if draw(st.booleans()):
            lines[k] += delimiter + "extra"
        elif delimiter in lines[k]:
            lines[k] = lines[k].rsplit(delimiter, 1)[0]
    elif fault == "dropped column":
        lines[0] = delimiter.join(c for c in lines[0].split(delimiter) if c != "label")
    elif fault == "same column twice":
        lines[0] = lines[0].replace("label", "text", 1)
    elif fault == "open quote":
        lines[-2] = '"' + lines[-2] if len(lines) > 1 else lines[-1]
    elif fault == "other delimiter":
        lines = [ln.replace(delimiter, ";") for ln in lines]
    return "\r\n".join(lines).encode("utf-8", "surrogatepass"), fault


def _parquet(rows: list, draw) -> bytes | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not all(isinstance(r, dict) for r in rows):
        return None
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None                                       # not a table Parquet can hold
    out = pa.BufferOutputStream()
    try:
        pq.write_table(table, out)
    except pa.ArrowException:
        return None                                       # e.g. an empty struct column
    return out.getvalue().to_pybytes()


_WRITERS = {"json": _json, "jsonl": _jsonl, "csv": lambda r, d: _table(r, d, ",")[0],
            "tsv": lambda r, d: _table(r, d, "\t")[0], "parquet": _parquet}
_SUFFIX = {"json": ".json", "jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "parquet": ".parquet"}


# -- byte-level faults -------------------------------------------------------------------------

_BYTE_FAULTS = ("as written", "as written", "as written", "BOM", "UTF-16", "Latin-1",
                "truncated", "empty", "blank", "random bytes", "deep nesting", "long number")


def _bytes_fault(data: bytes, draw, fmt: str) -> tuple[bytes, str]:
    fault = draw(st.sampled_from(_BYTE_FAULTS))
    if fault == "BOM":
        return b"\xef\xbb\xbf" + data, fault
    if fault == "UTF-16":
        return data.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass"), fault
    if fault == "Latin-1":
        return data.decode("utf-8", "surrogatepass").encode("latin-1", "replace") + b"\xe9", fault
    if fault == "truncated":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))], fault
    if fault == "empty":
        return b"", fault
    if fault == "blank":
        return b" \n\t\n", fault
    if fault == "random bytes":
        return draw(st.binary(max_size=200)), fault
    if fault == "deep nesting" and fmt in ("json", "jsonl", "config", "groups"):
        depth = draw(st.sampled_from([50, 100_000]))
        if fmt in ("config", "groups"):
            return b"x = " + b"[" * depth + b"]" * depth + b"\n", fault
        nested = b"[" * depth + b"]" * depth
        return (b'[{"text": "t", "label": ' + nested + b"}]" if fmt == "json"
                else b'{"text": "t", "label": ' + nested + b"}"), fault
    if fault == "long number" and fmt in ("json", "jsonl"):
        number = b"9" * 5000                              # past Python's 4,300-digit limit
        return (b'[{"text": "t", "label": ' + number + b"}]" if fmt == "json"
                else b'{"text": "t", "label": ' + number + b"}"), fault
    return data, "as written"


@st.composite
def data_case(draw, fmt: str) -> Case:
    """One thing wrong: a row (``_rows``) or, in a file of valid rows, its bytes."""
    rows, fault = draw(_rows())
    data = _WRITERS[fmt](rows, draw)
    if data is None:
        data, fault = _json(rows, draw), f"{fault} (Parquet cannot hold it: JSON bytes)"
    elif fault == "valid" and fmt in ("csv", "tsv") and draw(st.booleans()):
        data, fault = _table(rows, draw, "," if fmt == "csv" else "\t", faulty=True)
        fault = "valid" if fault == "as written" else fault
    elif fault == "valid" and fmt != "parquet":
        data, fault = _bytes_fault(data, draw, fmt)
        fault = "valid" if fault == "as written" else fault
    elif fault == "valid" and draw(st.booleans()):
        data, fault = data[: draw(st.integers(0, len(data) - 1))], "truncated"
    return Case((("data" + _SUFFIX[fmt], data),), fault)


@st.composite
def folder_case(draw) -> Case:
    files = []
    for name in ("train", "validation", "test"):
        fmt = draw(st.sampled_from(("json", "jsonl", "csv")))
        rows, _ = draw(_rows(("valid",)))
        files.append((name + _SUFFIX[fmt], _WRITERS[fmt](rows, draw)))
    fault = draw(st.sampled_from(["valid", "no validation file", "two train files",
                                  "one file broken", "no test file"]))
    if fault == "no validation file":
        files = [f for f in files if not f[0].startswith("validation")]
    elif fault == "no test file":
        files = [f for f in files if not f[0].startswith("test")]
    elif fault == "two train files":
        files.append(("train.tsv", b"text\tlabel\na\tpos\n"))
    elif fault == "one file broken":
        fmt = draw(st.sampled_from(("json", "jsonl", "csv")))
        broken = draw(data_case(fmt))
        k = draw(st.integers(0, len(files) - 1))
        files[k] = (files[k][0].split(".")[0] + _SUFFIX[fmt], broken.files[0][1])
        fault = f"one file broken: {broken.what}"
    return Case(tuple(files), fault)


# -- TOML ----------------------------------------------------------------------------------------

_GOOD_SETTINGS = {"batch_size": st.integers(1, 512), "seed": st.integers(0, 99),
                  "label_smoothing": st.floats(0, 0.5), "study": _texts.filter(str.isidentifier),
                  "max_samples": st.integers(10, 10_000), "smoke": st.booleans(),
                  "lr_grid": st.lists(st.floats(1e-5, 1e-1), min_size=1, max_size=3, unique=True),
                  "dense_embeddings": st.booleans(), "device": st.sampled_from(["cpu", "auto"]),
                  "r_drop": st.floats(0, 2)}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, the rest raw
    (JSON's \\uXXXX surrogate pairs are not TOML)."""
    def one(c: str) -> str:
        if c in '"\\':
            return "\\" + c
        return f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
    return '"' + "".join(one(c) for c in text) + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_string(k)} = {_toml_value(x)}" for k, x in v.items()
                               if x is not None) + "}"
    return '"none"'


@st.composite
def config_case(draw) -> Case:
    keys = draw(st.lists(st.sampled_from(sorted(_GOOD_SETTINGS)), unique=True, max_size=4))
    values = {k: draw(_GOOD_SETTINGS[k]) for k in keys}
    fault = draw(st.sampled_from(["valid", "wrong type", "unknown key", "out of range"]))
    if fault == "wrong type":
        values[draw(st.sampled_from(sorted(_GOOD_SETTINGS)))] = draw(_any_json.filter(
            lambda v: v is not None))
    elif fault == "unknown key":
        values[draw(_texts)] = draw(_scalars.filter(lambda v: v is not None))
    elif fault == "out of range":
        values[draw(st.sampled_from(["batch_size", "label_smoothing", "r_drop"]))] = -1
    text = "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in values.items())
    data, bytes_fault = _bytes_fault(text.encode("utf-8", "surrogatepass"), draw, "config")
    return Case((("config.toml", data),), fault if bytes_fault == "as written" else bytes_fault)


@st.composite
def groups_case(draw) -> Case:
    groups = draw(st.dictionaries(_texts, st.lists(_texts, min_size=1, max_size=3), min_size=1,
                                  max_size=3))
    fault = draw(st.sampled_from(["valid", "wrong type", "empty list", "nested table"]))
    name = draw(_texts)
    if fault == "wrong type":
        groups[name] = draw(_any_json.filter(lambda v: v is not None))
    elif fault == "empty list":
        groups[name] = []
    elif fault == "nested table":
        groups[name] = {"inner": ["backbone."]}
    text = "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in groups.items())
    data, bytes_fault = _bytes_fault(text.encode("utf-8", "surrogatepass"), draw, "groups")
    return Case((("groups.toml", data),), fault if bytes_fault == "as written" else bytes_fault)


def case_strategy(reader: str):
    if reader in DATA_READERS:
        return data_case(reader)
    if reader == "predict":
        return st.sampled_from(DATA_READERS).flatmap(data_case)
    return {"folder": folder_case(), "config": config_case(), "groups": groups_case()}[reader]


# -- the contract --------------------------------------------------------------------------------

def _usable(dataset) -> None:
    """What phase 0 and training do with accepted rows must work."""
    from model import ByteTokenizer

    json.dumps(dataset.records, sort_keys=True, ensure_ascii=False).encode("utf-8")
    dataset.encode(dataset.records, ByteTokenizer(32))
    for f in dataset.fields:
        if f.kind == "regression":
            assert all(math.isfinite(r[f.field]) for r in dataset.records), f.field


def check(reader: str, case: Case) -> str:
    """"accepted" or "refused"; AssertionError (or the unexpected exception) otherwise."""
    from model import load_groups_file
    from storage import load_file, read_texts
    from tuner.cli import apply_config_file, build_parser, config_from_args

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, data in case.files:
            (root / name).write_bytes(data)
        target = root if reader == "folder" else root / case.files[0][0]
        try:
            if reader in ("folder", *DATA_READERS):
                _usable(load_file(target))
            elif reader == "predict":
                for text in read_texts(target):
                    assert isinstance(text, str)
                    text.encode("utf-8")
            elif reader == "config":
                # run_study.parse_config in its two steps: reading the file names it in every
                # error; the settings' own checks of well-typed values name the setting.
                parser = build_parser()
                apply_config_file(parser, str(target))
                try:
                    config_from_args(parser.parse_args(["--config", str(target)]))
                except ValueError as e:
                    assert "\n" not in str(e), f"a message of several lines: {e}"
                    return "refused"
            else:
                groups = load_groups_file(target)
                assert groups and all(isinstance(v, tuple) and v for v in groups.values())
        except ValueError as e:
            message = str(e)
            assert "\n" not in message, f"{type(e).__name__} of several lines: {message!r}"
            assert str(target) in message, \
                f"{type(e).__name__} that does not name the file: {message!r}"
            return "refused"
        return "accepted"


def run(reader: str, examples: int, seed: int | None, tally: Counter, kinds: dict) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case_strategy(reader))
    def fuzz(case: Case) -> None:
        outcome = check(reader, case)
        tally[outcome] += 1
        kinds[case.what][outcome] += 1

    if seed is not None:
        fuzz = __import__("hypothesis").seed(seed)(fuzz)
    fuzz()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1200, help="inputs per reader")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: derandomized)")
    p.add_argument("--readers", default=",".join(READERS))
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # the readers' warnings about kept control characters
    print("| reader | inputs | accepted | refused | seconds |")
    print("|---|---:|---:|---:|---:|")
    every: dict[str, dict] = {}
    total = 0
    for reader in args.readers.split(","):
        tally: Counter = Counter()
        kinds: dict = defaultdict(Counter)
        start = time.perf_counter()
        run(reader, args.examples, args.seed, tally, kinds)
        n = tally["accepted"] + tally["refused"]
        total += n
        every[reader] = kinds
        print(f"| {reader} | {n:,} | {tally['accepted']:,} | {tally['refused']:,} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)
    print(f"\n{total:,} inputs, every one accepted or refused with one line naming the file")
    print("\n| reader | input | accepted | refused |\n|---|---|---:|---:|")
    for reader, kinds in every.items():
        for what, c in sorted(kinds.items()):
            print(f"| {reader} | {what} | {c['accepted']} | {c['refused']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
