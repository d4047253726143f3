"""A whole run with bf16 weights and torchao's 8-bit AdamW: killed in the long run and
resumed, it reports what an unbroken run reports; its checkpoints are bf16 and the final
model predicts."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from _runs import ONE_LR, ROOT, STUDY, command, finish, outcome
from safetensors import safe_open

from model.optimizers import available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available("adamw8bit"), reason="torchao is not installed")]

# The smallest model and sweep: the point is the optimizer and its state across a kill.
EIGHT = ("--optimizer", "adamw8bit", "--preset", "tiny", *ONE_LR, "--crossover-trials", "0")


def test_an_8bit_run_killed_in_the_long_run_resumes_to_the_unbroken_runs_results(tmp_path):
    unbroken = tmp_path / "unbroken"
    finish(unbroken, *EIGHT)
    broken = tmp_path / "broken"
    env = {**os.environ, "REDHEART_CRASH_AT": "long:epoch=3#1"}  # after epoch 2's resume state
    out = subprocess.run(command(broken, *EIGHT), cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    again = finish(broken, *EIGHT)
    assert "long run: resuming after epoch" in again.stderr
    assert outcome(broken) == outcome(unbroken)

    session = unbroken / STUDY
    settings = json.loads((session / "settings.json").read_text())["settings"]
    assert settings["train.optimizer"] == "adamw8bit"
    group_file = next((session / "checkpoints" / "epoch_004").glob("*.safetensors"))
    with safe_open(group_file, "pt") as fh:
        names = fh.keys()
        assert {str(fh.get_slice(k).get_dtype()) for k in names} == {"BF16"}
    state = next((session / "checkpoints" / "resume").glob("state_epoch_*.safetensors"))
    with safe_open(state, "pt") as fh:
        names = fh.keys()
    assert any(k.endswith(".codes") for k in names)  # the 8-bit moments, by name
