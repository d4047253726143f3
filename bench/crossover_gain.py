"""The strategy's headline, measured: does a crossover (or a per-group soup, an ensemble, a
soup) beat the best single checkpoint, does the final model beat a linear baseline, and
which monitor and sweet-spot method decide best?

Trains phases 0-2 of the default pipeline once per seed (the seed changes the 10,000-row
sample, the split and the initialisation), then replays phases 3-4 on copies of each
session under every --monitors x --methods combination (``tuner.replay``: no retraining).
Prints, per combination, each candidate's mean paired test-accuracy gain over the best
single checkpoint with a 95% t-interval across seeds, the final model against the linear
baseline, and each combination's final model against the default combination's; then,
pooled over every test row of every seed (a bootstrap of rows within each seed, and a
two-level one: seeds, then rows), the final model against the best single checkpoint and the
linear baseline, the optimized crossover against the uniform soup, the greedy soup against
the best single checkpoint, and each final-choice rule's gain, how often it picks a combined
model and its gain when it does.

    python bench/crossover_gain.py                     # seeds 0 1 2
    python bench/crossover_gain.py --trained runs/x    # sessions trained already: runs/x/seed_<s>
    python bench/crossover_gain.py -- --smoke          # flags after -- go to run_study.py

Runs and replays are kept in --workdir and reused, so an interrupted bench continues.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _replays import (
    REFERENCE,
    final_row,
    phase_seconds,
    pooled_table,
    predictions,
    pts,
    replay_one,
    rows,
    rules_table,
    train,
)

CLAIM = "the strategy's claim: single model 75-80% -> crossover 85-90% (+5 to +15 pts)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workdir", default="runs/bench_crossover_gain")
    p.add_argument("--trained", help="a folder of sessions trained already (seed_<s>/bench)")
    p.add_argument("--monitors", nargs="+", default=["val_loss", "val_acc"])
    p.add_argument("--methods", nargs="+", default=["module-loss", "splice"])
    args, extra = p.parse_known_args()
    extra = [a for a in extra if a != "--"]
    workdir = Path(args.workdir)
    combos = [(m, s) for m in args.monitors for s in args.methods]
    default = combos[0]
    results: dict[tuple[str, str], list[dict]] = {c: [] for c in combos}
    preds: dict[tuple[str, str], list[dict]] = {c: [] for c in combos}
    for seed in args.seeds:
        trained = Path(args.trained or workdir) / f"seed_{seed}"
        if args.trained is None:
            print(f"seed {seed}: phases 0-2 in {train(seed, trained, extra):.0f} s", flush=True)
        for monitor, method in combos:
            out = workdir / "replays" / f"seed_{seed}" / f"{monitor}__{method}"
            res, wall = replay_one(seed, trained, out, extra, monitor=monitor,
                                   sweet_spot_method=method)
            results[(monitor, method)].append(res)
            preds[(monitor, method)].append(predictions(out))
            times = phase_seconds(out / "replay.log")
            print(f"seed {seed} {monitor:<10} {method:<12} phases 3-4 {wall:5.0f} s (phase 3 "
                  f"{times.get('3', '?')} s)  final "
                  f"{res['crossover_recipe']['method']:<22} test acc "
                  f"{final_row(res)['test_acc']:.4f}  sweet spots {res['sweet_spots']}", flush=True)

    n = len(args.seeds)
    print(f"\n{n} seeds; test accuracy gain over {REFERENCE} within each seed, in points "
          f"(mean [95% t-interval across seeds]); {CLAIM}\n")
    names = list(rows(results[default][0]))
    print(f"{'candidate':<24}" + "".join(f"{m + ' / ' + s:>30}" for m, s in combos))
    for name in names:
        cells = []
        for combo in combos:
            gains = [100 * (rows(r)[name]["test_acc"] - rows(r)[REFERENCE]["test_acc"])
                     for r in results[combo]]
            cells.append(pts(gains))
        print(f"{name:<24}" + "".join(f"{c:>30}" for c in cells))

    print("\nfinal model (chosen on val by the monitor), per combination")
    print(f"{'monitor / method':<28}{'test acc':>10}{'vs best single':>22}{'vs linear baseline':>24}"
          f"{'vs ' + default[0] + ' / ' + default[1]:>30}   final models")
    for combo in combos:
        finals = [final_row(r) for r in results[combo]]
        accs = [f["test_acc"] for f in finals]
        single = [100 * (f["test_acc"] - rows(r)[REFERENCE]["test_acc"])
                  for f, r in zip(finals, results[combo], strict=True)]
        base = [100 * (f["test_acc"] - rows(r)["linear_baseline"]["test_acc"])
                for f, r in zip(finals, results[combo], strict=True)]
        vs_default = [100 * (f["test_acc"] - final_row(d)["test_acc"])
                      for f, d in zip(finals, results[default], strict=True)]
        kinds = ", ".join(r["crossover_recipe"]["method"] for r in results[combo])
        print(f"{combo[0] + ' / ' + combo[1]:<28}{statistics.fmean(accs):>10.4f}{pts(single):>22}"
              f"{pts(base):>24}{pts(vs_default):>30}   {kinds}")


    for combo in combos:
        print(f"\n{combo[0]} / {combo[1]}: pooled over the {sum(len(p['target']) for p in preds[combo]):,} "
              f"test rows of {n} seeds (bootstrap of rows within each seed; two-level: seeds, "
              "then rows; 2,000 resamples)\n")
        print("\n".join(pooled_table(results[combo], preds[combo])))
        print()
        print("\n".join(rules_table(results[combo], preds[combo])))


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"\nbench wall time {time.perf_counter() - start:.0f} s")
