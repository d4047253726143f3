"""bench/gpu_check.py, the one script a lent GPU machine runs, in its CPU dry run: the smoke
run, the same run killed three times and resumed, their comparison, and bench/gpu.py."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys

import pytest
from _runs import ROOT

from model.optimizers import available

_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
_spec.loader.exec_module(gpu_check)


def test_kill_points_are_mid_sweep_mid_long_run_and_inside_the_crossover_study():
    trace = ["phase:0#1", "sweep:lr=0.005:epoch=1#1", "sweep:lr=0.005:epoch=2#1",
             "sweep:lr=0.01:epoch=1#1", "sweep:lr=0.01:epoch=2#1", "phase:1#1",
             *(f"long:epoch={e}#1" for e in range(1, 7)), "crossover:trial:0#1",
             "crossover:trial:1#1", "crossover:trial:2#1"]
    assert gpu_check.kill_points(trace) == ["sweep:lr=0.01:epoch=1#1", "long:epoch=4#1",
                                            "crossover:trial:1#1"]
    assert gpu_check.kill_points(["long:epoch=1#1"]) == ["long:epoch=1#1"]


def test_the_comparison_counts_differing_values_and_tells_a_changed_decision():
    a = {"final_results": {"best_lr": 0.01, "crossover_recipe": {"method": "greedy_soup"},
                           "test_table": [{"test_acc": 0.5, "val_loss": 1.25}]},
         "final_model_sha256": "ab"}
    same = gpu_check.compare(a, json.loads(json.dumps(a)))
    assert (same["differ"], same["values"], same["same_decisions"]) == (0, 5, True)
    b = json.loads(json.dumps(a))
    b["final_results"]["test_table"][0]["val_loss"] = 1.5
    b["final_model_sha256"] = "cd"
    moved = gpu_check.compare(a, b)
    assert (moved["differ"], moved["max_abs_diff"], moved["same_decisions"]) == (2, 0.25, True)
    b["final_results"]["best_lr"] = 0.02
    assert gpu_check.compare(a, b)["same_decisions"] is False


def _documented(name: str) -> list[str]:
    """The one-line command docs/memory.md shows under ``<!-- name: run by this file -->``."""
    text = (ROOT / "docs" / "memory.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- {name}: run by tests/bench/test_gpu_check.py -->\n```bash\n(.+)\n```",
                      text)
    assert found, f"docs/memory.md has no block marked {name!r}"
    return shlex.split(found.group(1))


@pytest.mark.slow
def test_the_dry_run_smokes_kills_resumes_compares_and_benches(tmp_path):
    argv = _documented("gpu-check-dry-run")
    assert argv[:2] == ["python", "bench/gpu_check.py"] and argv[-2] == "--out"
    out = subprocess.run([sys.executable, *argv[1:-1], str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert [s["result"] for s in summary["steps"]] == ["ok"] * 5
    assert steps["smoke run, killed 3 times and resumed"]["figures"].count("#") == 3
    # On a CPU the resumed run is the unbroken one, bit for bit, as is a second run.
    assert steps["resumed vs unbroken"]["figures"].startswith("identical")
    assert steps["smoke run, again (noise floor)"]["figures"].startswith("identical")
    assert "RESULT: 5 ok, 0 failed" in out.stdout
    for log in ("smoke_unbroken", "smoke_killed_1", "smoke_killed_3", "smoke_resumed"):
        assert (tmp_path / f"{log}.log").stat().st_size > 0

    # bench/gpu.py's own report (what tests/bench/test_gpu.py checked before)
    text = (tmp_path / "bench_gpu.log").read_text()
    assert text.count("state round trip identical") == 2
    assert "| plain AdamW | yes |" in text and "| activation checkpointing | yes |" in text
    assert "4. projected long run (60 epochs x 10,000 rows" in text
    bench = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert bench["worst_activation_layer_pct"] < 10.0  # every layer within 10% of a measurement
    if available("adamw8bit"):  # torchao's 8-bit AdamW runs on a CPU too (offload does not)
        assert "tiny adamw8bit: train loss" in text and "bit-identical to the unbroken" in text
        assert "| 8-bit AdamW, bf16 weights | yes |" in text
