"""Helpers for the end-to-end reliability tests: run run_study.py, kill it, compare outcomes."""

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
from optuna.trial import TrialState

from tuner.lr_sweep import trial_lr

ROOT = Path(__file__).resolve().parents[1]
STUDY = "c"
# The long run may go to 6 epochs but stops after epoch 4 (no later checkpoint improves the
# val loss by 100): every reliability test crosses the early stop.
SMOKE = ["--smoke", "--no-progress", "--study", STUDY, "--seed", "3", "--epochs", "6",
         "--patience", "1", "--min-checkpoints", "2", "--min-delta", "100"]
STOP_EPOCH = 4
# The fewest settings that still run every phase (one LR, one sweep epoch, one checkpoint, the
# queued crossover recipes only): for tests whose point is that a whole run completes.
ONE_LR = ["--lr-grid", "0.01", "--extend-grid", "0", "--sweep-epochs", "1"]
MINIMAL = [*ONE_LR, "--epochs", "2", "--crossover-trials", "0"]


def failure_text(stderr: str, tail: int = 3000) -> str:
    """What a failed run's assertion shows: the stacks faulthandler printed for a native
    crash ("Fatal Python error", e.g. a torchrun rank's SIGABRT), which torchrun's error
    table that follows would push out of a plain tail, then the tail."""
    crash = stderr.find("Fatal Python error")
    head = stderr[crash:crash + 4000] + "\n...\n" if crash >= 0 else ""
    return head + stderr[-tail:]


def command(backup: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "run_study.py"), *SMOKE, "--backup-dir", str(backup), *extra]


def finish(backup: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(command(backup, *extra), cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, failure_text(out.stderr)
    return out


def run_until(backup: Path, marker: str) -> str:
    """Start run_study.py and SIGKILL it as soon as ``marker`` appears in its log."""
    proc = subprocess.Popen(command(backup), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    return "".join(seen)


def crash_at(backup: Path, point: str) -> subprocess.CompletedProcess:
    """Run with the crash point ``point`` armed; it must kill the process."""
    env = {**os.environ, "REDHEART_CRASH_AT": point}
    out = subprocess.run(command(backup), cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == -signal.SIGKILL, f"{point} was not reached:\n{out.stderr[-2000:]}"
    return out


def outcome(backup: Path) -> dict:
    """Everything a run reports, for comparing a broken run with an unbroken one; checks
    on the way that no grid point or crossover recipe finished twice and no .tmp is left."""
    storage = f"sqlite:///{backup}/{STUDY}.db"
    sweep = optuna.load_study(study_name=f"{STUDY}-lr-sweep", storage=storage)
    long_run = optuna.load_study(study_name=f"{STUDY}-long-run", storage=storage)
    crossover = optuna.load_study(study_name=f"{STUDY}-crossover", storage=storage)
    # A trial that found every grid point claimed (ends PRUNED without an LR) ran nothing.
    finished = [t for t in sweep.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                and trial_lr(t) is not None]
    counts = Counter(t.params["lr"] for t in finished)
    assert all(n == 1 for n in counts.values()), counts  # no grid point finished twice
    done = [t for t in long_run.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1
    recipes = Counter(tuple(sorted(t.params.items())) for t in crossover.trials
                      if t.state == TrialState.COMPLETE and "queued_recipe" in t.user_attrs)
    assert all(n == 1 for n in recipes.values()), recipes  # no queued recipe completed twice
    session = backup / STUDY
    assert not list(session.rglob("*.tmp"))
    results = json.loads((session / "final_results.json").read_text())
    del results["timestamp"]
    manifest = json.loads((session / "checkpoints" / "epoch_004" / "manifest.json").read_text())
    return {
        "selected_lr": json.loads((session / "lr_sweep" / "lr_selection_report.json").read_text())[
            "selected_lr"],
        "sweep": {t.params["lr"]: (t.state.name, t.value, t.intermediate_values) for t in finished},
        "long_run": (done[0].value, done[0].intermediate_values),
        "crossover": [(t.params, t.value) for t in crossover.trials
                      if t.state == TrialState.COMPLETE],
        "final_results": results,
        "final_model": hashlib.sha256(
            (session / "final" / "optimal_crossover_model.safetensors").read_bytes()).hexdigest(),
        "report": (session / "final" / "report.md").read_text(),
        "final_checkpoint": {f: info["sha256"] for f, info in manifest["files"].items()},
        "checkpoints": sorted(p.name for p in (session / "checkpoints").glob("epoch_*")),
    }
