"""CSV, TSV and Parquet data files, and a folder of split files: read into the same records
as the JSON loader, with the same one-line errors naming file, row and column."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from storage import DataError, load_file

ROWS = [{"text": f"text number {i}\nwith a second line", "label": ["neg", "pos"][i % 2],
         "tags": ["a", "b", "c"][: i % 3], "score": i / 4} for i in range(12)]


def _csv(path: Path, rows: list[dict], delimiter: str = ",", bom: bool = False,
         tags=lambda t: json.dumps(t)) -> Path:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(["text", "label", "tags", "score"])
        for r in rows:
            w.writerow([r["text"], r["label"], tags(r["tags"]), f"{r['score']:.2f}"])
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _as_loaded(d) -> list[tuple]:
    return [(r["text"], r["label"], r["tags"], r["score"]) for r in d.records]


def test_csv_tsv_and_parquet_give_the_records_and_tasks_of_the_json_file(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    fields = ("label", "tags", "score")
    want = load_file(tmp_path / "d.json", "text", fields)
    files = [_csv(tmp_path / "d.csv", ROWS, bom=True),  # Excel writes a BOM
             _csv(tmp_path / "d.tsv", ROWS, "\t"),
             _parquet(tmp_path / "d.parquet", ROWS)]
    for path in files:
        got = load_file(path, "text", fields)
        assert [(f.name, f.kind, f.classes) for f in got.fields] == [
            (f.name, f.kind, f.classes) for f in want.fields], path
        assert _as_loaded(got) == _as_loaded(want), path
    assert [f.kind for f in want.fields] == ["single", "multi", "regression"]


def test_a_separated_multi_label_column_needs_its_kind_and_separator(tmp_path):
    path = _csv(tmp_path / "d.csv", ROWS, tags=lambda t: "|".join(t))
    got = load_file(path, "text", ("label", "tags"), kinds={"tags": "multi"}, label_separator="|")
    assert [r["tags"] for r in got.records] == [r["tags"] for r in ROWS]
    with pytest.raises(DataError, match=r"d\.csv: row 1 \(line 4\): column 'tags': expected a "
                                        r"JSON list.*--label-separator"):
        load_file(path, "text", ("label", "tags"), kinds={"tags": "multi"})


def test_whole_numbers_stay_classes_unless_told_regression(tmp_path):
    rows = [{"text": f"t{i}", "y": str(i)} for i in range(30)]
    path = tmp_path / "n.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, ["text", "y"])
        w.writeheader()
        w.writerows(rows)
    assert load_file(path, "text", ("y",)).fields[0].kind == "single"
    numeric = load_file(path, "text", ("y",), kinds={"y": "regression"})
    assert numeric.fields[0].kind == "regression" and numeric.records[3]["y"] == 3.0


@pytest.mark.parametrize(("content", "fields", "kinds", "expected"), [
    ("text,label\na,x\nb,y,z\n", ("label",), {},
     r"bad\.csv: row 1 \(line 3\): 3 cells, expected 2 like the header \(text, label\)"),
    ("text,label\na,x\n", ("emotion",), {}, r"bad\.csv: the header has no column 'emotion'"),
    ("text,label\na,x\nb,\n", ("label",), {},
     r"bad\.csv: row 1 \(line 3\): column 'label' is empty; expected a label"),
    ("text,y\na,1.5\nb,high\n", ("y",), {"y": "regression"},
     r"bad\.csv: row 1 \(line 3\): column 'y': expected a number \(regression\), got 'high'"),
    ('text,tags\na,"[""x"", ""y"""\n', ("tags",), {},
     r"bad\.csv: row 0 \(line 2\): column 'tags': a cell that starts with '\[' must be a JSON list"),
    ("text,label\n,x\nb,y\n", ("label",), {},
     r"bad\.csv: row 0 \(line 2\): field 'text': the text is empty or blank"),
    ("text,text,label\na,a,x\n", ("label",), {}, r"bad\.csv: the header names columns \['text'\]"),
    ("", ("label",), {}, r"bad\.csv: the file is empty"),
])
def test_bad_csv_names_the_file_row_and_column(tmp_path, content, fields, kinds, expected):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        load_file(path, "text", fields, kinds=kinds)


def test_bad_parquet_is_a_data_error_naming_the_file_and_row(tmp_path):
    pytest.importorskip("pyarrow")
    damaged = tmp_path / "x.parquet"
    damaged.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"x\.parquet: not a valid Parquet file"):
        load_file(damaged)
    nulls = _parquet(tmp_path / "n.parquet", [{"text": "a", "label": "x"},
                                              {"text": None, "label": "y"}])
    with pytest.raises(DataError, match=r"n\.parquet: row 1: field 'text': expected a string, "
                                        r"got null"):
        load_file(nulls)


def test_invalid_utf8_csv_names_the_byte(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes(b"text,label\ncaf\xe9,x\n")
    with pytest.raises(DataError, match=r"l\.csv: not valid UTF-8 at byte 14"):
        load_file(path)


def test_a_folder_of_split_files_gives_its_splits_and_samples_train_only(tmp_path):
    _csv(tmp_path / "train.csv", ROWS[:8])
    _csv(tmp_path / "validation.csv", ROWS[8:10])
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS[10:]),
                                         encoding="utf-8")
    got = load_file(tmp_path, "text", ("label", "tags"), max_samples=5, seed=1)
    assert {k: len(v) for k, v in got.splits.items()} == {"train": 5, "val": 2, "test": 2}
    assert got.total_rows == 12 and len(got.records) == 9
    assert got.splits["val"][0]["text"] == ROWS[8]["text"]


def test_a_folder_without_a_validation_file_is_refused(tmp_path):
    _csv(tmp_path / "train.csv", ROWS)
    with pytest.raises(DataError, match="no validation file; a data folder holds train"):
        load_file(tmp_path)
