"""bench/throughput.py's inputs: the long rows it builds and the split both trainers read."""

from __future__ import annotations

import csv
import importlib.util
import sys

from _runs import ROOT

_spec = importlib.util.spec_from_file_location("throughput", ROOT / "bench" / "throughput.py")
throughput = importlib.util.module_from_spec(_spec)
sys.modules["throughput"] = throughput
_spec.loader.exec_module(throughput)


def test_long_rows_join_one_movies_snippets_of_one_label_and_cut_at_511_bytes(tmp_path):
    path = tmp_path / "rt.csv"
    snippet = "é" * 150 + "."                  # 301 bytes, 151 characters
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "movie"])
        w.writeheader()
        for _ in range(4):
            w.writerow({"text": snippet, "label": "fresh", "movie": "a"})
            w.writerow({"text": "short", "label": "rotten", "movie": "a"})
        w.writerow({"text": snippet, "label": "fresh", "movie": "b"})
    rows = throughput.long_rows(path, chars=300)
    # movie a, fresh: snippets 1+2 make 304 characters, then 3+4; rotten and b never reach 300.
    assert [r["label"] for r in rows] == ["fresh", "fresh"]
    for r in rows:
        assert len(r["text"].encode("utf-8")) <= 511
        assert r["text"].startswith(snippet + " ")
        r["text"].encode("utf-8").decode("utf-8")  # no character cut in half
    assert len(rows[0]["text"].encode("utf-8")) == 510  # 511 would split a two-byte "é"


def test_the_split_is_disjoint_seeded_and_80_10_10():
    rows = [{"i": i} for i in range(1000)]
    parts = throughput.split(rows, seed=3)
    sizes = {k: len(v) for k, v in parts.items()}
    assert sizes == {"train": 800, "val": 100, "test": 100}
    seen = [r["i"] for part in parts.values() for r in part]
    assert sorted(seen) == list(range(1000))
    assert throughput.split(rows, seed=3) == parts != throughput.split(rows, seed=4)
