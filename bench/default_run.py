"""Time the default pipeline phase by phase, and compare its final model with another run's.

    python bench/default_run.py                       # 3 runs (seeds 0 1 2), this checkout
    python bench/default_run.py --repo /tmp/old --keep /tmp/old-runs   # another checkout
    python bench/default_run.py --keep /tmp/new-runs --compare-to /tmp/old-runs
    python bench/default_run.py --patience 0 --epochs 20 --dense      # flags of run_study.py

Each run is ``python run_study.py --no-progress --seed S`` in a fresh backup folder (the
settings of the default run otherwise), timed as a whole and per phase from its log
("phase N done in X s"); the rest of the wall time (imports, model build, storage) is
"startup". The corpus cache is warm for these runs; phase 0 alone is then timed with a
cold cache (an empty ``XDG_CACHE_HOME``) and a warm one, ``--repeats`` times each. Every
figure printed is a median, with each phase's share of the median wall time.

With ``--keep DIR`` the sessions are kept, and each run's final model predicts its test
rows (``test_predictions.json`` beside the session, written by the checkout that trained
it). ``--compare-to DIR`` reads another kept set (same seeds) and prints, per seed and
pooled, the paired test-accuracy difference of this set's final model minus that one's,
with a 95% bootstrap interval over the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tuner.uncertainty import confidence  # noqa: E402

STUDY = "bench"
PHASES = ("startup", "0", "1", "2", "3", "4")

# Run inside the checkout that trained the session: its own code reads its own model.
_PREDICT = """
import json, sys
from pathlib import Path
from run_study import parse_config
from storage import read_json
from tuner.predict import load_predictor, predict
from tuner.prepare import load_data
session, argv = Path(sys.argv[1]), sys.argv[2:]
cfg = parse_config(argv)
dataset = load_data(cfg)
state = read_json(session / "preprocessing" / "phase0_state.json")
rows = [dataset.records[i] for i in state["splits"]["test"]]
label = dataset.fields[0]
out = predict(load_predictor(session), [r[dataset.text_field] for r in rows], progress=False)
json.dump({"predicted": [o[label.name]["label"] for o in out],
           "target": [r[label.field] for r in rows],
           "texts": [r[dataset.text_field] for r in rows]},
          open(session.parent / "test_predictions.json", "w"))
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose run_study.py runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--repeats", type=int, default=3, help="cold and warm phase-0 runs each")
    p.add_argument("--epochs", type=int, help="run_study.py --epochs (the long run's maximum)")
    p.add_argument("--patience", type=int, help="run_study.py --patience (0: the full run)")
    p.add_argument("--optimizer", help="run_study.py --optimizer")
    p.add_argument("--dense", action="store_true",
                   help="run_study.py --dense-embeddings (train the n-gram tables densely)")
    p.add_argument("--extra", default="", help="more run_study.py arguments, one string")
    p.add_argument("--keep", type=Path, help="keep the sessions here (and their test predictions)")
    p.add_argument("--compare-to", type=Path, help="a --keep folder of another set of runs")
    return p.parse_args(argv)


def run_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--no-progress"]
    for name in ("epochs", "patience", "optimizer"):
        if getattr(args, name) is not None:
            flags += [f"--{name}", str(getattr(args, name))]
    if args.dense:
        flags.append("--dense-embeddings")
    return flags + args.extra.split()


def phase_seconds(log: str) -> dict[str, float]:
    """Seconds per phase from a run's log ("phase N done in X s")."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"phase (\d) done in ([\d.]+) s", log)}


def run_once(repo: Path, backup: Path, flags: list[str], cache: Path) -> tuple[float, dict, str]:
    """One ``run_study.py``; returns (wall seconds, seconds per phase, log)."""
    cmd = [sys.executable, str(repo / "run_study.py"), "--backup-dir", str(backup),
           "--study", STUDY, *flags]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    phases = phase_seconds(out.stderr + out.stdout)
    phases["startup"] = max(0.0, wall - sum(phases.values()))
    return wall, phases, out.stderr


def predictions(repo: Path, backup: Path, flags: list[str], cache: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(repo)}
    args = [a for a in flags if a != "--no-progress"]
    subprocess.run([sys.executable, "-c", _PREDICT, str(backup / STUDY), "--backup-dir",
                    str(backup), "--study", STUDY, *args], cwd=repo, env=env, check=True)


def paired(new: dict, old: dict) -> tuple[float, float, float]:
    """(difference, low, high) in accuracy points, new minus old, over the same rows: the
    paired bootstrap of the test table (``tuner.uncertainty.confidence``)."""
    if new["texts"] != old["texts"]:
        sys.exit("the two runs' test rows differ: compare runs of the same seeds and data")
    ids = {label: i for i, label in enumerate(sorted({*new["target"], *new["predicted"],
                                                     *old["predicted"]}, key=str))}
    as_ids = lambda labels: np.array([ids[x] for x in labels])  # noqa: E731
    row = confidence({"new": as_ids(new["predicted"]), "old": as_ids(old["predicted"])},
                     as_ids(new["target"]), "old")["new"]["acc_vs_old"]
    return 100 * row["diff"], 100 * row["ci"][0], 100 * row["ci"][1]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flags = run_flags(args)
    work = Path(tempfile.mkdtemp(prefix="default-run-"))
    keep = args.keep or work / "runs"
    warm = work / "warm-cache"
    print(f"checkout {args.repo}; run_study.py {' '.join(flags)}; seeds {args.seeds}")
    walls, per_phase, results = [], {p: [] for p in PHASES}, {}
    for seed in args.seeds:
        backup = keep / f"seed{seed}"
        shutil.rmtree(backup, ignore_errors=True)
        wall, phases, log = run_once(args.repo, backup, [*flags, "--seed", str(seed)], warm)
        walls.append(wall)
        for p in PHASES:
            per_phase[p].append(phases.get(p, 0.0))
        final = json.loads((backup / STUDY / "final_results.json").read_text())
        results[seed] = final
        stop = re.search(r"long run stopped early.*", log)
        print(f"seed {seed}: {wall:.1f} s ({', '.join(f'{p} {phases.get(p, 0):.1f}' for p in PHASES)})"
              f"; final {final['crossover_recipe']['method']} test acc "
              f"{final['crossover_recipe']['test_acc']:.4f}" + (f"; {stop.group(0)}" if stop else ""))
        if args.keep:
            predictions(args.repo, backup, [*flags, "--seed", str(seed)], warm)
    wall = statistics.median(walls)
    print(f"\nwall time, median of {len(walls)}: {wall:.1f} s")
    print("phase      median s   share")
    for p in PHASES:
        m = statistics.median(per_phase[p])
        print(f"{p:<9} {m:9.1f} {100 * m / wall:6.1f}%")

    # Phase 0 alone (with startup), cold and warm corpus cache.
    cold_walls, warm_walls = [], []
    for i in range(args.repeats):
        cold = work / f"cold-cache-{i}"
        for cache, into in ((cold, cold_walls), (warm, warm_walls)):
            backup = work / "phase0"
            shutil.rmtree(backup, ignore_errors=True)
            into.append(run_once(args.repo, backup, [*flags, "--stop-after", "0"], cache)[0])
    print(f"startup + phase 0, median of {args.repeats}: cold corpus cache "
          f"{statistics.median(cold_walls):.1f} s, warm {statistics.median(warm_walls):.1f} s")

    for seed, final in results.items():
        row = {r["candidate"]: r for r in final["test_table"]}
        name = final["crossover_recipe"]["method"]
        vs = row[name].get("test_ci", {}).get("acc_vs_linear_baseline")
        base = row.get("linear_baseline", {})
        print(f"seed {seed}: final {name} test acc {row[name]['test_acc']:.4f} macro-F1 "
              f"{row[name]['test_macro_f1']:.4f}; linear baseline {base.get('test_acc', 0):.4f} "
              f"/ {base.get('test_macro_f1', 0):.4f}" + (
                  f"; paired acc difference {100 * vs['diff']:+.1f} pts "
                  f"[{100 * vs['ci'][0]:+.1f}, {100 * vs['ci'][1]:+.1f}]" if vs else ""))
    if args.compare_to:
        pooled_new, pooled_old = {"predicted": [], "target": [], "texts": []}, \
            {"predicted": [], "target": [], "texts": []}
        for seed in args.seeds:
            new = json.loads((keep / f"seed{seed}" / "test_predictions.json").read_text())
            old = json.loads((args.compare_to / f"seed{seed}" / "test_predictions.json").read_text())
            d, lo, hi = paired(new, old)
            print(f"seed {seed}: final model minus {args.compare_to}'s, paired test accuracy "
                  f"{d:+.2f} pts [{lo:+.2f}, {hi:+.2f}] over {len(new['target'])} rows")
            for k in pooled_new:
                pooled_new[k] += new[k]
                pooled_old[k] += old[k]
        d, lo, hi = paired(pooled_new, pooled_old)
        print(f"pooled over seeds: {d:+.2f} pts [{lo:+.2f}, {hi:+.2f}]")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
