"""The strategy's headline, measured: does a crossover (or an ensemble, a soup) beat the best
single checkpoint, and does the final model beat a linear baseline?

Runs the whole default pipeline (``run_study.py``, every phase) once per seed; the seed
changes both the 10,000-row data sample and the initialisation. Then prints, per method,
the mean paired test-accuracy gain over the best single checkpoint with a 95% t-interval
across seeds, and the final model's mean test accuracy and macro-F1 next to the baseline's.

    python bench/crossover_gain.py                     # seeds 0 1 2, the default pipeline
    python bench/crossover_gain.py --seeds 0 1 2 3 4
    python bench/crossover_gain.py -- --smoke          # flags after -- go to run_study.py

Runs are kept in --workdir and resumed, so an interrupted bench continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "best_single_checkpoint"

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


def run_seed(seed: int, workdir: Path, extra: list[str]) -> tuple[dict, float]:
    backup = workdir / f"seed_{seed}"
    cmd = [sys.executable, str(ROOT / "run_study.py"), "--no-progress", "--seed", str(seed),
           "--backup-dir", str(backup), "--study", "bench", *extra]
    backup.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(backup / "run_study.log", "a", encoding="utf-8") as log:  # phase times are in it
        out = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"seed {seed} failed (exit {out.returncode}); see {backup / 'run_study.log'}")
    return json.loads((backup / "bench" / "final_results.json").read_text()), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workdir", default="runs/bench_crossover_gain")
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    workdir = Path(args.workdir)
    results = []
    for seed in args.seeds:
        res, wall = run_seed(seed, workdir, extra)
        final = res["crossover_recipe"]["method"]
        print(f"seed {seed}: {wall:.0f} s wall, LR {res['best_lr']:g}, final model {final}",
              flush=True)
        results.append(res)

    tables = [{r["candidate"]: r for r in res["test_table"]} for res in results]
    print(f"\n{len(results)} seeds; test accuracy, paired against {REFERENCE} within each seed "
          "(points; mean and 95% t-interval across seeds)\n")
    print(f"{'method':<26}{'mean test acc':>14}{'gain (pts)':>12}{'95% CI':>20}{'seeds sig. +/-':>16}")
    for name in tables[0]:
        accs = [t[name]["test_acc"] for t in tables]
        gains = [100 * (t[name]["test_acc"] - t[REFERENCE]["test_acc"]) for t in tables]
        mean, lo, hi = t_interval(gains)
        sig = [t[name].get("test_ci", {}).get(f"acc_vs_{REFERENCE}", {}) for t in tables]
        plus = sum(1 for s in sig if s.get("significant") and s["diff"] > 0)
        minus = sum(1 for s in sig if s.get("significant") and s["diff"] < 0)
        print(f"{name:<26}{statistics.fmean(accs):>14.4f}{mean:>+12.2f}"
              f"{f'[{lo:+.2f}, {hi:+.2f}]':>20}{f'{plus}/{minus}':>16}")

    finals = [t[res["crossover_recipe"]["method"]] for t, res in zip(tables, results, strict=True)]
    print("\nfinal model against the references (mean over seeds, 95% t-interval)")
    for label, rows in (("final model", finals),
                        ("linear_baseline", [t["linear_baseline"] for t in tables]),
                        ("majority_class", [t["majority_class"] for t in tables])):
        acc = t_interval([r["test_acc"] for r in rows])
        f1 = t_interval([r["test_macro_f1"] for r in rows])
        print(f"{label:<18} test acc {acc[0]:.4f} [{acc[1]:.4f}, {acc[2]:.4f}]   "
              f"macro-F1 {f1[0]:.4f} [{f1[1]:.4f}, {f1[2]:.4f}]")
    diff = t_interval([100 * (f["test_acc"] - t["linear_baseline"]["test_acc"])
                       for f, t in zip(finals, tables, strict=True)])
    print(f"final - linear baseline: {diff[0]:+.2f} pts [{diff[1]:+.2f}, {diff[2]:+.2f}]")


if __name__ == "__main__":
    main()
