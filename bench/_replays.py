"""Shared by bench/crossover_gain.py and bench/regime.py: train phases 0-2 once per seed,
then replay phases 3-4 under each monitor and sweet-spot method on copies of the session
(tuner.replay), and summarise across seeds with t-intervals."""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from run_study import parse_config  # noqa: E402
from tuner.replay import replay  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the replays' trials, one line each

REFERENCE = "best_single_checkpoint"
STUDY = "bench"

# Two-sided 97.5% quantiles of Student's t for 1..10 degrees of freedom.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% t-interval; a single value has no interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = _T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def run_args(seed: int, backup: Path, extra: list[str]) -> list[str]:
    return ["--no-progress", "--seed", str(seed), "--backup-dir", str(backup), "--study", STUDY,
            *extra]


def train(seed: int, backup: Path, extra: list[str]) -> float:
    """Phases 0-2 of ``run_study.py`` (resumed if interrupted); returns the wall seconds."""
    backup.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "run_study.py"), *run_args(seed, backup, extra),
           "--stop-after", "2"]
    start = time.perf_counter()
    with open(backup / "run_study.log", "a", encoding="utf-8") as log:  # phase times are in it
        out = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        sys.exit(f"seed {seed} failed (exit {out.returncode}); see {backup / 'run_study.log'}")
    return time.perf_counter() - start


def phase_seconds(log: Path) -> dict[str, float]:
    """Each phase's seconds in a run's log, summed over its "phase N done in X s" lines
    (a resumed or rerun phase adds what that run spent on it)."""
    found: dict[str, float] = {}
    if log.is_file():
        for m in re.finditer(r"phase (\d) done in ([\d.]+) s", log.read_text(encoding="utf-8")):
            found[m.group(1)] = found.get(m.group(1), 0.0) + float(m.group(2))
    return found


def replay_one(seed: int, trained: Path, out: Path, extra: list[str], **changes) -> tuple[dict, float]:
    """Phases 3-4 of the trained session under ``changes``, kept in ``out`` (a finished
    replay is read back, not run again). Returns final_results and the wall seconds."""
    done = out / "r" / STUDY / "final_results.json"
    asked = json.dumps({"seed": seed, "trained": str(trained), "extra": extra, **changes},
                       sort_keys=True)
    if done.is_file() and (out / "replay.json").is_file() and (out / "replay.json").read_text() == asked:
        return json.loads(done.read_text()), math.nan
    if out.exists():  # an interrupted replay: start it again from the source
        import shutil
        shutil.rmtree(out)
    cfg = parse_config(run_args(seed, trained, extra))
    start = time.perf_counter()
    out.mkdir(parents=True)
    log = logging.FileHandler(out / "replay.log", encoding="utf-8")  # phase times, as a run logs
    log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(log)
    root.setLevel(logging.INFO)
    try:
        results = replay(cfg, out / "r", **changes)
    finally:
        root.removeHandler(log)
        log.close()
    (out / "replay.json").write_text(asked)  # what this replay was asked, for reuse
    return results, time.perf_counter() - start


def rows(results: dict) -> dict[str, dict]:
    return {r["candidate"]: r for r in results["test_table"]}


def final_row(results: dict) -> dict:
    return rows(results)[results["crossover_recipe"]["method"]]


def pts(values: list[float]) -> str:
    mean, lo, hi = t_interval(values)
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else f"{mean:+.2f}"
