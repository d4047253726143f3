"""The smoke pipeline on CSV, TSV and Parquet versions of one data set, and on a folder of
train/validation/test files whose splits phase 0 keeps."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _runs import MINIMAL, ROOT

from storage import load_embedded

FIELDS = ["text", "label", "intent"]


def _rows(n: int = 400) -> list[dict]:
    return [{k: r[k] for k in FIELDS} for r in load_embedded(n, seed=5).records]


def _write_csv(path: Path, rows: list[dict], delimiter: str, intent) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(FIELDS)
        w.writerows([r["text"], r["label"], intent(r["intent"])] for r in rows)


def _make(kind: str, folder: Path) -> tuple[Path, list[str]]:
    rows = _rows()
    if kind == "csv":  # multi-label cells separated by |, stated as such
        path = folder / "data.csv"
        _write_csv(path, rows, ",", "|".join)
        return path, ["--task-kind", "intent=multi", "--label-separator", "|"]
    if kind == "tsv":  # multi-label cells as JSON lists
        path = folder / "data.tsv"
        _write_csv(path, rows, "\t", json.dumps)
        return path, []
    if kind == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        path = folder / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path, []
    path = folder / "splits"
    path.mkdir()
    for name, part in (("train", rows[:300]), ("validation", rows[300:350]), ("test", rows[350:])):
        _write_csv(path / f"{name}.csv", part, ",", json.dumps)
    return path, []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "folder"])
def test_the_smoke_pipeline_runs_on_each_kind_of_data_file(tmp_path, kind):
    data, extra = _make(kind, tmp_path)
    out = subprocess.run([sys.executable, str(ROOT / "run_study.py"), "--smoke", "--no-progress",
                          "--backup-dir", str(tmp_path / "runs"), "--data-path", str(data),
                          "--label-fields", "label,intent", *MINIMAL, *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    session = tmp_path / "runs" / "redheart"
    results = json.loads((session / "final_results.json").read_text())
    rows = {r["candidate"]: r for r in results["test_table"]}
    assert {"linear_baseline", "majority_class", results["crossover_recipe"]["method"]} <= set(rows)
    assert 0 <= rows["linear_baseline"]["test_acc"] <= 1
    summary = json.loads((session / "preprocessing" / "data_summary.json").read_text())
    assert [t["name"] for t in summary["tasks"]] == ["label", "intent"]
    assert [t["kind"] for t in summary["tasks"]] == ["single", "multi"]
    if kind == "folder":
        assert "using the given splits (train 300, val 50, test 50)" in out.stderr
        split = summary["split"]
        assert split["train"] <= 300 and split["val"] <= 50 and split["test"] <= 50
