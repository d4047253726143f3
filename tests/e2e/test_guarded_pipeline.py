"""The whole smoke pipeline and `predict` under tests/_device_guard.py: every tensor factory
in model/, tuner/ and storage/ that the run reaches names its device (or derives it), so the
same run on a GPU cannot mix a CPU tensor into CUDA work. (The hf: runs of
tests/e2e/test_hf_models.py go through the same guard.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _runs import ROOT

from storage import load_embedded

GUARDED = [sys.executable, str(ROOT / "tests" / "_guarded_run.py")]


@pytest.mark.slow
def test_every_phase_and_predict_make_their_tensors_on_the_run_device(tmp_path):
    backup = tmp_path / "runs"
    out = subprocess.run([*GUARDED, "--smoke", "--no-progress", "--backup-dir", str(backup)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    session = backup / "redheart"
    table = json.loads((session / "final_results.json").read_text())["test_table"]
    # Phase 4 built and scored every kind of candidate under the guard.
    assert {"optimized_crossover", "variant_ensemble", "uniform_soup", "greedy_soup", "ema",
            "linear_baseline"} <= {r["candidate"] for r in table}

    data = tmp_path / "rows.jsonl"
    rows = load_embedded(20, seed=5).records
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    out = subprocess.run([*GUARDED, "predict", "--session", str(session), "--data-path",
                          str(data), "--output", str(tmp_path / "p.jsonl"), "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == len(rows)
