"""SIGKILL run_study.py in phases 1, 2, 3 and 4, rerun it, and compare everything with an
unbroken run: the LR choice, every reported value, the crossover trials, the final model."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--smoke", "--no-progress", "--study", "c", "--seed", "3"]


def _cmd(backup: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run_study.py"), *ARGS, "--backup-dir", str(backup)]


def _run_until(backup: Path, marker: str) -> None:
    """Start run_study.py and SIGKILL it as soon as ``marker`` appears in its log."""
    proc = subprocess.Popen(_cmd(backup), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])


def _finish(backup: Path) -> None:
    out = subprocess.run(_cmd(backup), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def _outcome(backup: Path) -> dict:
    storage = f"sqlite:///{backup}/c.db"
    sweep = optuna.load_study(study_name="c-lr-sweep", storage=storage)
    long_run = optuna.load_study(study_name="c-long-run", storage=storage)
    finished = [t for t in sweep.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    counts = Counter(t.params["lr"] for t in finished)
    assert all(n == 1 for n in counts.values()), counts  # no grid point finished twice
    done = [t for t in long_run.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1
    session = backup / "c"
    manifest = json.loads((session / "checkpoints" / "epoch_004" / "manifest.json").read_text())
    assert not list(session.rglob("*.tmp"))
    crossover = optuna.load_study(study_name="c-crossover", storage=storage)
    results = json.loads((session / "final_results.json").read_text())
    del results["timestamp"]
    return {
        "crossover": [(t.params, t.value) for t in crossover.trials if t.state == TrialState.COMPLETE],
        "final_results": results,
        "final_model": hashlib.sha256(
            (session / "final" / "optimal_crossover_model.safetensors").read_bytes()).hexdigest(),
        "report": (session / "final" / "report.md").read_text(),
        "selected_lr": json.loads((session / "lr_sweep" / "lr_selection_report.json").read_text())[
            "selected_lr"],
        "sweep": {t.params["lr"]: (t.state.name, t.value, t.intermediate_values) for t in finished},
        "long_run": (done[0].value, done[0].intermediate_values),
        "final_checkpoint": {f: info["sha256"] for f, info in manifest["files"].items()},
        "checkpoints": sorted(p.name for p in (session / "checkpoints").glob("epoch_*")),
    }


@pytest.mark.slow
def test_sigkill_in_every_phase_then_rerun_equals_an_unbroken_run(tmp_path):
    unbroken = tmp_path / "unbroken"
    _finish(unbroken)

    crashed = tmp_path / "crashed"
    _run_until(crashed, "LR 0.0002 epoch 1/2")        # second grid point, mid trial
    _run_until(crashed, "long run epoch 3/4")          # phase 2, after epoch 3 is reported
    storage = f"sqlite:///{crashed}/c.db"
    states = [t.state for t in optuna.load_study(study_name="c-long-run", storage=storage).trials]
    assert states == [TrialState.RUNNING]  # left running by the killed process
    _run_until(crashed, "phase 3: overfitting point")  # phase 3 done, phase 4 not started
    _run_until(crashed, "crossover trial 1:")          # phase 4, a queued trial evaluated, not told
    states = [t.state for t in optuna.load_study(study_name="c-crossover", storage=storage).trials]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]
    _finish(crashed)

    expected, got = _outcome(unbroken), _outcome(crashed)
    assert got == expected
    assert len(expected["sweep"]) == 5 and expected["checkpoints"] == ["epoch_002", "epoch_004"]
    sweep = optuna.load_study(study_name="c-lr-sweep", storage=storage)
    assert [t.state for t in sweep.trials].count(TrialState.FAIL) == 1  # the killed trial
    crossover = optuna.load_study(study_name="c-crossover", storage=storage)
    assert [t.state for t in crossover.trials].count(TrialState.FAIL) == 1
