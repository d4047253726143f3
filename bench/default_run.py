"""Time the default pipeline phase by phase, and compare its final model with another run's.

    python bench/default_run.py                       # 3 runs (seeds 0 1 2), this checkout
    python bench/default_run.py --repo /tmp/old --keep /tmp/old-runs   # another checkout
    python bench/default_run.py --keep /tmp/new-runs --compare-to /tmp/old-runs
    python bench/default_run.py --patience 0 --epochs 20 --dense      # flags of run_study.py
    python bench/default_run.py --against /tmp/old    # interleaved A/B: this checkout vs that

With ``--against OLD`` the two checkouts run alternately, seed by seed (the order flips
each seed, so drift in the machine's load hits both alike), each in a fresh backup folder
with its own cold corpus cache for the first run: it prints each checkout's median wall
and CPU time (the run's process and its children) with their phase medians, the speed-up
ratios old / new, startup + phase 0 with a cold and a warm cache, and the paired test
accuracy of this checkout's final model minus the old one's, per seed and pooled over the
seeds' test rows (non-inferiority: read the pooled lower bound).

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
import resource
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
    p.add_argument("--against", type=Path,
                   help="another checkout: run both, interleaved, and compare them")
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(repo: Path, backup: Path, flags: list[str], cache: Path) -> tuple[float, dict, str]:
    """One ``run_study.py``; returns (wall seconds, seconds per phase, log). The phases
    carry "cpu": the CPU seconds of the run and its child processes."""
    cmd = [sys.executable, str(repo / "run_study.py"), "--backup-dir", str(backup),
           "--study", STUDY, *flags]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(repo)}
    start, cpu = time.perf_counter(), _children_cpu()
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    phases = phase_seconds(out.stderr + out.stdout)
    phases["startup"] = max(0.0, wall - sum(phases.values()))
    phases["cpu"] = _children_cpu() - cpu
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


def _pooled(keep: Path, names: tuple[str, str], seeds: list[int]) -> None:
    """Paired test accuracy of keep/<new>/seedS minus keep/<old>/seedS, per seed and pooled."""
    pooled = {n: {"predicted": [], "target": [], "texts": []} for n in names}
    for seed in seeds:
        runs = {n: json.loads((keep / n / f"seed{seed}" / "test_predictions.json").read_text())
                for n in names}
        d, lo, hi = paired(runs[names[0]], runs[names[1]])
        print(f"seed {seed}: {names[0]} minus {names[1]}, paired test accuracy {d:+.2f} pts "
              f"[{lo:+.2f}, {hi:+.2f}] over {len(runs[names[0]]['target'])} rows")
        for n in names:
            for k in pooled[n]:
                pooled[n][k] += runs[n][k]
    d, lo, hi = paired(pooled[names[0]], pooled[names[1]])
    print(f"pooled over {len(seeds)} seeds ({len(pooled[names[0]]['target'])} rows): "
          f"{d:+.2f} pts [{lo:+.2f}, {hi:+.2f}]")


def ab_main(args: argparse.Namespace, flags: list[str]) -> None:
    """The interleaved A/B of this checkout ("new") against ``--against`` ("old")."""
    repos = {"new": args.repo.resolve(), "old": args.against.resolve()}
    work = Path(tempfile.mkdtemp(prefix="default-run-ab-"))
    keep = args.keep or work / "runs"
    caches = {n: work / f"cache-{n}" for n in repos}
    print(f"new {repos['new']}; old {repos['old']}; run_study.py {' '.join(flags)}; "
          f"seeds {args.seeds}")
    figures = {n: {"wall": [], **{p: [] for p in (*PHASES, "cpu")}} for n in repos}
    for i, seed in enumerate(args.seeds):
        for name in (("new", "old") if i % 2 == 0 else ("old", "new")):
            backup = keep / name / f"seed{seed}"
            shutil.rmtree(backup, ignore_errors=True)
            seed_flags = [*flags, "--seed", str(seed)]
            wall, phases, _ = run_once(repos[name], backup, seed_flags, caches[name])
            figures[name]["wall"].append(wall)
            for p in (*PHASES, "cpu"):
                figures[name][p].append(phases.get(p, 0.0))
            final = json.loads((backup / STUDY / "final_results.json").read_text())
            print(f"seed {seed} {name}: {wall:.1f} s wall, {phases['cpu']:.1f} s CPU "
                  f"({', '.join(f'{p} {phases.get(p, 0):.1f}' for p in PHASES)}); final "
                  f"{final['crossover_recipe']['method']} test acc "
                  f"{final['crossover_recipe']['test_acc']:.4f}", flush=True)
            predictions(repos[name], backup, seed_flags, caches[name])
    med = {n: {k: statistics.median(v) for k, v in f.items()} for n, f in figures.items()}
    print(f"\nmedians of {len(args.seeds)} seeds     new      old   old/new")
    for k in ("wall", "cpu", *PHASES):
        ratio = med["old"][k] / med["new"][k] if med["new"][k] > 0 else float("nan")
        print(f"{k:<22} {med['new'][k]:7.1f}  {med['old'][k]:7.1f}  {ratio:6.2f}x")
    starts = {n: {"cold": [], "warm": []} for n in repos}
    for i in range(args.repeats):
        for name in (("new", "old") if i % 2 == 0 else ("old", "new")):
            for kind, cache in (("cold", work / f"cold-{name}-{i}"), ("warm", caches[name])):
                backup = work / "phase0"
                shutil.rmtree(backup, ignore_errors=True)
                starts[name][kind].append(
                    run_once(repos[name], backup, [*flags, "--stop-after", "0"], cache)[0])
    for name in repos:
        print(f"startup + phase 0 ({name}), median of {args.repeats}: cold corpus cache "
              f"{statistics.median(starts[name]['cold']):.1f} s, warm "
              f"{statistics.median(starts[name]['warm']):.1f} s")
    _pooled(keep, ("new", "old"), args.seeds)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flags = run_flags(args)
    if args.against is not None:
        ab_main(args, flags)
        return
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
