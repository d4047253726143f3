"""The memory plan at the start of a run: written to the session, switched to activation
checkpointing when only that fits --gpu-memory-gib (with --optimizer adamw pinned), to bf16
weights with 8-bit AdamW when the optimizer is left to it and that is the fastest that fits,
refused with the table otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
from _runs import ROOT

from model import build_model
from model.memory import GIB, TrainShape, plan_memory
from model.optimizers import available


def _run(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_study.py"), "--smoke", "--preset",
                           "tiny", "--stop-after", "0", "--backup-dir", str(tmp_path), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _totals() -> tuple[float, float]:
    model = build_model("tiny", device="meta")  # the smoke run: batch 64 x 48 bytes, fp32 on CPU
    return tuple(plan_memory(model, TrainShape(64, 48, "fp32", activation_checkpointing=c))[
        "total"] / GIB for c in (False, True))


def _eight_bit_budget() -> str:
    """A budget (GiB) halfway between the smoke run's plan with AdamW and with 8-bit AdamW."""
    model = build_model("tiny", device="meta")
    shape = TrainShape(64, 48, "fp32")
    plain = plan_memory(model, shape)["total"]
    eight = plan_memory(model, replace(shape, optimizer="adamw8bit"))["total"]
    assert eight < plain
    return f"{(plain + eight) / 2 / GIB:.9f}"


def test_a_budget_only_checkpointing_fits_switches_it_on_and_says_why(tmp_path):
    plain, checkpointed = _totals()
    out = _run(tmp_path, "--optimizer", "adamw", "--gpu-memory-gib",
               f"{(plain + checkpointed) / 2:.4f}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "activation checkpointing brings it to" in out.stderr and "switched on" in out.stderr
    assert "stay those of fp32 AdamW" in out.stderr
    assert "| **total** |" in out.stderr  # the table, printed at start
    plan = json.loads((tmp_path / "redheart" / "memory_plan.json").read_text())
    assert plan["activation_checkpointing"] is True
    assert plan["components_bytes"]["total"] / GIB <= (plain + checkpointed) / 2


def test_a_budget_nothing_fits_is_refused_with_the_table_and_what_to_change(tmp_path):
    out = _run(tmp_path, "--optimizer", "adamw", "--gpu-memory-gib", "0.01")
    assert out.returncode == 2
    assert "does not fit --gpu-memory-gib 0.01, even with activation checkpointing and the EMA " \
           "on the CPU" in out.stderr
    assert "without --optimizer the plan may switch optimizers" in out.stderr
    assert "| optimizer state |" in out.stderr and "Lower --batch-size" in out.stderr
    assert "Traceback" not in out.stderr


def test_when_only_both_options_fit_both_are_switched_on(tmp_path):
    model = build_model("tiny", device="meta")
    checkpointed = plan_memory(model, TrainShape(64, 48, "fp32", activation_checkpointing=True))
    both = plan_memory(model, TrainShape(64, 48, "fp32", ema_on_gpu=False,
                                         activation_checkpointing=True))
    budget = (checkpointed["total"] + both["total"]) / 2 / GIB
    out = _run(tmp_path, "--optimizer", "adamw", "--gpu-memory-gib", f"{budget:.9f}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "activation checkpointing and the EMA on the CPU brings it to" in out.stderr
    plan = json.loads((tmp_path / "redheart" / "memory_plan.json").read_text())
    assert plan["activation_checkpointing"] is True and plan["ema_device"] == "cpu"


@pytest.mark.skipif(not available("adamw8bit"), reason="torchao is not installed")
def test_left_to_the_plan_the_fastest_fitting_option_is_8bit_adamw_and_it_says_what_changes(
        tmp_path):
    out = _run(tmp_path, "--gpu-memory-gib", _eight_bit_budget())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bf16 weights with torchao's 8-bit AdamW brings it to" in out.stderr
    assert "this changes the numerics" in out.stderr
    plan = json.loads((tmp_path / "redheart" / "memory_plan.json").read_text())
    assert plan["optimizer"] == "adamw8bit"
    fitting = [o for o in plan["options"] if o["fits"]]
    assert fitting[0]["optimizer"] == "adamw8bit" and not fitting[0]["exact"]
    assert all(o["step_seconds"] >= fitting[0]["step_seconds"] for o in fitting)
    settings = json.loads((tmp_path / "redheart" / "settings.json").read_text())
    assert settings["settings"]["train.optimizer"] == "adamw8bit"


@pytest.mark.skipif(not available("adamw8bit"), reason="torchao is not installed")
def test_a_session_recorded_before_optimizers_existed_resumes_with_adamw_under_its_budget(
        tmp_path):
    # The budget at which a new session picks 8-bit AdamW (the test above).
    budget = ["--gpu-memory-gib", _eight_bit_budget()]
    first = _run(tmp_path, "--optimizer", "adamw", *budget)
    assert first.returncode == 0, first.stderr[-2000:]
    path = tmp_path / "redheart" / "settings.json"
    recorded = json.loads(path.read_text())
    del recorded["settings"]["train.optimizer"]  # as the version before --optimizer wrote it
    path.write_text(json.dumps(recorded))
    again = _run(tmp_path, *budget)  # left to itself, this budget would pick 8-bit AdamW
    assert again.returncode == 0, again.stderr[-2000:]
    plan = json.loads((tmp_path / "redheart" / "memory_plan.json").read_text())
    assert plan["optimizer"] == "adamw"
