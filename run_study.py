#!/usr/bin/env python
"""redheart-tuner command line: parse flags, set up logging, run ``tuner.pipeline``.

    python run_study.py                      # embedded corpus, tiny preset, defaults
    python run_study.py --data my.json --label-fields label
    python run_study.py --smoke              # a minute-long run of every phase
"""

from __future__ import annotations

import argparse
import logging
import sys

from model.training import TrainConfig
from tuner.pipeline import PipelineConfig, run

logger = logging.getLogger("run_study")

# --smoke: a small, fast run through every phase (tests and first-time checks).
_SMOKE = {"max_samples": 600, "epochs": 2}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_study.py",
        description="Run the Red Heart training strategy with Optuna: data quality, LR sweep, "
                    "long run, sweet spots and crossover. Rerun the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("study")
    g.add_argument("--study", default="redheart", help="study name (session folder and studies)")
    g.add_argument("--backup-dir", default="runs", help="where session folders go")
    g.add_argument("--seed", type=int, default=0, help="seed for sampling, splits and training")
    g.add_argument("--smoke", action="store_true",
                   help=f"small fast run: overrides {_SMOKE} unless given explicitly")
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None,
                   help="JSON list or JSONL file of objects; default: the embedded kaomoji corpus")
    d.add_argument("--text-field", default="text", help="field holding the text")
    d.add_argument("--label-fields", default="label",
                   help="comma-separated label fields, one task each (first = primary)")
    d.add_argument("--max-samples", type=int, default=None,
                   help="seeded sample size (default 10000, as the seed)")
    d.add_argument("--val-ratio", type=float, default=0.1)
    d.add_argument("--test-ratio", type=float, default=0.1,
                   help="held-out test split no selection sees; 0 = the seed's two-way split")
    d.add_argument("--dedup-threshold", type=float, default=0.92,
                   help="rapidfuzz ratio / 100 at or above which a later row is a near-duplicate")
    d.add_argument("--conflict-policy", default="keep_first", choices=("keep_first", "drop_group"),
                   help="duplicate groups whose labels disagree: keep the first row, or drop all")
    m = p.add_argument_group("model")
    m.add_argument("--preset", default="tiny", help="tiny | small | base | 730m")
    m.add_argument("--model", default=None, help="your own model: package.module:factory")
    m.add_argument("--max-length", type=int, default=64, help="tokens per text (bytes + CLS)")
    m.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default 60, as the seed)")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--label-smoothing", type=float, default=0.05)
    t.add_argument("--r-drop", type=float, default=1.0, help="R-Drop lambda; 0 = off")
    t.add_argument("--ema-decay", type=float, default=0.999, help="0 = no EMA")
    t.add_argument("--llrd-decay", type=float, default=0.9, help="1 = no layer-wise LR decay")
    t.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--log-level", default="INFO")
    o.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return p


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    smoke = _SMOKE if args.smoke else {}
    max_samples = args.max_samples if args.max_samples is not None else smoke.get(
        "max_samples", 10_000)
    epochs = args.epochs if args.epochs is not None else smoke.get("epochs", 60)
    train = TrainConfig(
        lr=args.lr, epochs=epochs, batch_size=args.batch_size, grad_accum=args.grad_accum,
        label_smoothing=args.label_smoothing, r_drop=args.r_drop, ema_decay=args.ema_decay,
        llrd_decay=args.llrd_decay, precision=args.precision, seed=args.seed,
        progress=not args.no_progress)
    return PipelineConfig(
        study=args.study, backup_dir=args.backup_dir, data=args.data,
        text_field=args.text_field,
        label_fields=tuple(f.strip() for f in args.label_fields.split(",") if f.strip()),
        max_samples=max_samples, preset=args.preset, model=args.model,
        max_length=args.max_length, device=args.device, val_ratio=args.val_ratio,
        test_ratio=args.test_ratio, dedup_threshold=args.dedup_threshold,
        conflict_policy=args.conflict_policy, train=train)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        run(cfg)
    except (ValueError, OSError) as e:
        # Errors a user can cause: one line and a non-zero exit, not a traceback.
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
