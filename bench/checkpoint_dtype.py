"""What bf16 (or fp16) checkpoint storage does to the crossover: every completed crossover
recipe of a finished session, evaluated on val from its fp32 checkpoints and from the same
weights rounded to 16 bits, side by side, with the checkpoint sizes.

    python bench/checkpoint_dtype.py runs/redheart     # a session folder (<backup-dir>/<study>)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import Dataset, load_embedded, read_json
from tuner.crossover import assemble_state, evaluate_state
from tuner.predict import load_predictor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("session", help="a finished session folder of the embedded corpus")
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    args = p.parse_args()
    root = Path(args.session)
    # The session's model, groups, tasks and tokenizer, as `run_study.py predict` rebuilds them.
    predictor = load_predictor(root)
    model, spec, fields = predictor.model, predictor.spec, predictor.fields
    tasks = tuple(f.spec for f in fields)
    settings = read_json(root / "settings.json")["settings"]
    records = load_embedded(settings["max_samples"], settings["train.seed"]).records
    state = read_json(root / "preprocessing" / "phase0_state.json")
    dataset = Dataset(records, fields, "embedded", predictor.text_field)
    val = dataset.encode([records[i] for i in state["splits"]["val"]], predictor.tokenizer)
    study = optuna.load_study(study_name=f"{root.name}-crossover",
                              storage=f"sqlite:///{root.parent / root.name}.db")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    diffs, rows = [], []
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        recipe = {g: int(e) for g, e in t.params.items()}
        full = assemble_state(root / "checkpoints", recipe, spec)
        rounded = {k: v.to(dtype).float() if v.is_floating_point() else v for k, v in full.items()}
        a = evaluate_state(model, full, val, tasks)
        b = evaluate_state(model, rounded, val, tasks)
        diffs.append(b["loss"] - a["loss"])
        rows.append((t.number, a["loss"], b["loss"], a["acc"], b["acc"]))
    print(f"{len(rows)} crossover recipes of {root}, val split ({len(val)} rows)")
    print("trial  val loss fp32  val loss " + args.dtype + "  val acc fp32  val acc " + args.dtype)
    for n, la, lb, aa, ab in rows:
        print(f"{n:5d}  {la:13.6f}  {lb:13.6f}  {aa:12.4f}  {ab:12.4f}")
    best_a = min(rows, key=lambda r: r[1])
    best_b = min(rows, key=lambda r: r[2])
    print(f"val loss change ({args.dtype} - fp32): median {statistics.median(diffs):+.2e}, "
          f"max |change| {max(abs(d) for d in diffs):.2e}")
    print(f"best recipe: fp32 picks trial {best_a[0]}, {args.dtype} picks trial {best_b[0]}")
    bytes_full = sum(v.numel() * 4 for v in model.state_dict().values())
    print(f"checkpoint of the weights: {bytes_full / 2**20:.2f} MiB fp32, "
          f"{bytes_full / 2**21:.2f} MiB {args.dtype} (ratio 0.50)")


if __name__ == "__main__":
    main()
