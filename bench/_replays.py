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

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from run_study import parse_config  # noqa: E402
from tuner.final_choice import SINGLE_CHECKPOINTS  # noqa: E402
from tuner.monitor import Monitor  # noqa: E402
from tuner.replay import replay  # noqa: E402
from tuner.uncertainty import BootstrapConfig, pooled_paired, two_level  # noqa: E402

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


# ------------------------------------------------------------------ pooled over the seeds

def predictions(out: Path) -> dict:
    """A replay's final/test_predictions.json: the test rows' targets and each candidate's
    predicted class per row."""
    return json.loads((out / "r" / STUDY / "final" / "test_predictions.json").read_text())


def _right(pred: dict, name: str) -> np.ndarray:
    return (np.asarray(pred["predicted"][name]) == np.asarray(pred["target"])).astype(float)


def _pts(found: dict) -> str:
    lo, hi = found["ci"]
    return f"{100 * found['diff']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


COMPARISONS = (("final", REFERENCE), ("final", "linear_baseline"),
               ("optimized_crossover", "uniform_soup"), ("greedy_soup", REFERENCE))


def pooled_table(results: list[dict], preds: list[dict], resamples: int = 2000) -> list[str]:
    """Test-accuracy differences pooled over every test row of every seed: a bootstrap of
    rows within each seed, and a two-level one (seeds, then rows)."""
    cfg = BootstrapConfig(resamples=resamples, seed=0)
    lines = ["| comparison (test accuracy, points) | pooled [95%] | two-level [95%] | rows | "
             "seeds |", "|---|---|---|---|---|"]
    for a, b in COMPARISONS:
        diffs = []
        for res, pred in zip(results, preds, strict=True):
            name = res["crossover_recipe"]["method"] if a == "final" else a
            diffs.append(_right(pred, name) - _right(pred, b))
        pooled, both = pooled_paired(diffs, cfg), two_level(diffs, cfg)
        lines.append(f"| {a} vs {b} | {_pts(pooled)} | {_pts(both)} | {pooled['rows']:,} | "
                     f"{pooled['runs']} |")
    return lines


def _old_rule(res: dict) -> str:
    """The single model best on the val columns under the monitor (the rule before the
    held-out selection rows)."""
    monitor = Monitor(res["monitor"])
    primary = next(iter(res["test_table"][0]["val_task_metrics"]))
    pool = [r for r in res["test_table"] if r["single_model"] and not r.get("reference")]
    return min(pool, key=lambda r: monitor.key(r, primary))["candidate"]


RULES = {
    "always the best single checkpoint": lambda res: REFERENCE,
    "always the nominee (best combined on the search rows)":
        lambda res: res["final_choice"]["nominee"] or REFERENCE,
    "best single model on the search rows (the rule before)": _old_rule,
    "the rule: the nominee when confirmed on the selection rows":
        lambda res: res["final_choice"]["final"],
}


def rules_table(results: list[dict], preds: list[dict], resamples: int = 2000) -> list[str]:
    """Per rule: its pooled test-accuracy gain over the best single checkpoint, how often it
    picks a combined model, and its mean gain when it does."""
    cfg = BootstrapConfig(resamples=resamples, seed=0)
    lines = ["| rule | pooled gain over best single [95%] | two-level [95%] | picks combined | "
             "mean gain when it does |", "|---|---|---|---|---|"]
    for label, rule in RULES.items():
        picks = [rule(res) for res in results]
        diffs = [_right(p, pick) - _right(p, REFERENCE) for p, pick in zip(preds, picks, strict=True)]
        combined = [d for d, pick in zip(diffs, picks, strict=True) if pick not in SINGLE_CHECKPOINTS]
        when = (f"{100 * float(np.concatenate(combined).mean()):+.2f}" if combined else "-")
        lines.append(f"| {label} | {_pts(pooled_paired(diffs, cfg))} | "
                     f"{_pts(two_level(diffs, cfg))} | {len(combined)} of {len(picks)} | {when} |")
    return lines
