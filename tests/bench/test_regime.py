"""bench/regime.py end to end on the tiny BERT the hf tests build and real embedded rows
written as a text,label,movie CSV: it trains once, replays phases 3-4 and reports every
decision the issue asks for."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from _runs import ROOT

pytest.importorskip("transformers")

from _hf import build_model_folder

from storage import load_embedded


@pytest.mark.slow
def test_the_regime_bench_reports_each_phases_decisions(tmp_path):
    model = build_model_folder("bert", tmp_path / "bert")
    data = tmp_path / "rows.csv"
    with open(data, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label", "movie"])
        for i, r in enumerate(load_embedded(300, seed=5).records):
            out.writerow([r["text"], r["label"], f"group_{i // 6}"])
    cmd = [sys.executable, str(ROOT / "bench" / "regime.py"), "--model-dir", str(model), "--csv",
           str(data), "--rows", "300", "--max-length", "24", "--sweep-epochs", "1", "--epochs", "3",
           "--crossover-trials", "2", "--monitors", "val_loss", "val_acc",
           "--workdir", str(tmp_path / "w"), "--", "--lr-grid", "1e-3,5e-3", "--extend-grid", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    text = done.stdout
    assert "LR grid tried [0.001, 0.005]" in text
    assert "test movies also have train snippets" in text
    for monitor in ("val_loss", "val_acc"):
        assert f"== monitor {monitor}, sweet spots by splice" in text
    assert text.count("overfitting point:") == 2
    # Each group of the hf model gets a sweet spot from its own spliced evidence.
    for group in ("embeddings", "head"):
        assert text.count(f"    {group}") == 2
    for row in ("optimized_crossover", "uniform_soup", "best_single_checkpoint", "linear_baseline"):
        assert row in text
    assert "vs linear baseline" in text and "final model:" in text
