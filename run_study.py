#!/usr/bin/env python
"""redheart-tuner command line: parse flags (and a TOML config), set up logging, run the pipeline.

    python run_study.py                      # embedded corpus, tiny preset, the seed's protocol
    python run_study.py --data-path my.json --label-fields label --device auto
    python run_study.py --smoke              # the whole pipeline's shape at toy size
    python run_study.py --config study.toml  # flags override the file

Rerun the same command after any interruption: it resumes from the storage and folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tomllib
from pathlib import Path

import torch

from model.training import TrainConfig
from storage.studies import dashboard_command
from tuner.dashboard import ARTIFACT_DIR
from tuner.long_run import LongRunConfig
from tuner.lr_sweep import PRESET_GRIDS, SEED_GRID, SweepConfig
from tuner.pipeline import PipelineConfig, run, storage_url
from tuner.sweet_spot import OverfitConfig

logger = logging.getLogger("run_study")

# --smoke: every phase at toy size (applies where a flag was not given explicitly).
SMOKE = {"max_samples": 400, "sweep_epochs": 2, "epochs": 4, "checkpoint_every": 2,
         "crossover_trials": 4}


def _fmt_grid(grid: tuple[float, ...]) -> str:
    return ",".join(f"{x:g}" for x in grid)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_study.py",
        description="Run the Red Heart training strategy with Optuna: data quality, LR sweep, "
                    "long run with modular checkpoints. Rerun the same command to resume.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("study")
    g.add_argument("--config", default=None, help="TOML file of settings (flag names); flags win")
    g.add_argument("--study-name", "--study", dest="study", default="redheart",
                   help="study name: session folder and the <name>-lr-sweep / -long-run studies")
    g.add_argument("--backup-dir", default="runs", help="where session folders go")
    g.add_argument("--storage", default=None,
                   help="Optuna storage URL (sqlite:///..., postgresql://..., mysql://..., "
                        "journal:///file.log); default sqlite:///<backup-dir>/<study>.db")
    g.add_argument("--seed", type=int, default=0, help="seed for sampling, splits and training")
    g.add_argument("--smoke", action="store_true", help=f"toy-size run of every phase: {SMOKE}")
    d = p.add_argument_group("data")
    d.add_argument("--data-path", "--data", dest="data", default=None,
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
    m.add_argument("--preset", default="ngram",
                   help="ngram (CPU: hashed character n-grams) | tiny | small | base | 730m "
                        "(byte transformers, for GPUs)")
    m.add_argument("--model", default=None, help="your own model: package.module:factory")
    m.add_argument("--max-length", type=int, default=None,
                   help="tokens per text (bytes + CLS); default: the preset's")
    m.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    t = p.add_argument_group("training")
    t.add_argument("--lr-grid", default=None,
                   help="comma-separated LRs of the sweep; default: the preset's five "
                        f"({', '.join(f'{k}: {_fmt_grid(v)}' for k, v in PRESET_GRIDS.items())}; "
                        f"the seed's {_fmt_grid(SEED_GRID)} for a --model)")
    t.add_argument("--extend-grid", type=int, default=2,
                   help="when the selected LR is the largest or smallest tried, add up to N "
                        "more points beyond that edge, one at a time (0 = never)")
    t.add_argument("--sweep-epochs", type=int, default=None, help="epochs per LR (default 5)")
    t.add_argument("--epochs", type=int, default=None, help="long-run epochs (default 60)")
    t.add_argument("--checkpoint-every", type=int, default=None,
                   help="epochs between modular checkpoints (default 2)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--gradient-accumulation", "--grad-accum", dest="grad_accum", type=int,
                   default=1, help="micro-batches per optimizer step")
    t.add_argument("--label-smoothing", type=float, default=0.05)
    t.add_argument("--r-drop", type=float, default=1.0, help="R-Drop lambda; 0 = off")
    t.add_argument("--ema-decay", type=float, default=0.999, help="0 = no EMA")
    t.add_argument("--llrd-decay", type=float, default=0.9, help="1 = no layer-wise LR decay")
    t.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    t.add_argument("--selection-method", default="normalized", choices=("normalized", "seed"),
                   help="LR selection: scale-free criteria, or the seed's literal formulas")
    t.add_argument("--crossover-trials", type=int, default=None,
                   help="TPE crossover trials after the two queued ones (default 30)")
    t.add_argument("--stop-after", type=int, default=4, choices=range(5), metavar="{0..4}",
                   help="the last phase to run (0: data quality only; default 4: everything)")
    t.add_argument("--overfit-criterion", default="gl", choices=("seed", "gl", "pq", "up"),
                   help="which overfitting criterion bounds the sweet spots (all are reported)")
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--log-level", default="INFO")
    o.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return p


def _apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """TOML keys are flag names (dashes or underscores); they become the parser's defaults."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    known = {a.dest for a in parser._actions}
    defaults = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        dest = {"data_path": "data", "study_name": "study", "gradient_accumulation": "grad_accum"}.get(
            dest, dest)
        if dest not in known or dest in ("config", "help"):
            raise ValueError(f"{path}: unknown setting {key!r}; expected a run_study.py flag name")
        if dest == "lr_grid" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        defaults[dest] = value
    parser.set_defaults(**defaults)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device (use cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


def _lr_grid(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--lr-grid must be comma-separated numbers, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    smoke = SMOKE if args.smoke else {}

    def pick(name: str, default: int) -> int:
        value = getattr(args, name)
        return value if value is not None else smoke.get(name, default)

    train = TrainConfig(
        epochs=pick("epochs", 60), batch_size=args.batch_size, grad_accum=args.grad_accum,
        label_smoothing=args.label_smoothing, r_drop=args.r_drop, ema_decay=args.ema_decay,
        llrd_decay=args.llrd_decay, precision=args.precision, seed=args.seed,
        progress=not args.no_progress)
    return PipelineConfig(
        study=args.study, backup_dir=args.backup_dir, data=args.data, storage=args.storage,
        text_field=args.text_field,
        label_fields=tuple(f.strip() for f in args.label_fields.split(",") if f.strip()),
        max_samples=pick("max_samples", 10_000), preset=args.preset, model=args.model,
        max_length=args.max_length, device=_device(args.device), val_ratio=args.val_ratio,
        test_ratio=args.test_ratio, dedup_threshold=args.dedup_threshold,
        conflict_policy=args.conflict_policy, train=train,
        sweep=SweepConfig(lr_grid=None if args.lr_grid is None else _lr_grid(args.lr_grid),
                          epochs=pick("sweep_epochs", 5), extend_grid=args.extend_grid),
        long_run=LongRunConfig(epochs=pick("epochs", 60),
                               checkpoint_every=pick("checkpoint_every", 2)),
        selection_method=args.selection_method,
        overfit=OverfitConfig(decide_by=args.overfit_criterion),
        crossover_trials=pick("crossover_trials", 30), stop_after=args.stop_after)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    first, _ = parser.parse_known_args(argv)
    try:
        if first.config:
            _apply_config_file(parser, first.config)
        args = parser.parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cfg = config_from_args(args)
        artifacts = Path(cfg.backup_dir) / cfg.study / ARTIFACT_DIR
        print(f"watch it live: {dashboard_command(storage_url(cfg), artifacts)}", file=sys.stderr,
              flush=True)
        run(cfg)
    except (ValueError, OSError) as e:
        # Errors a user can cause: one line and a non-zero exit, not a traceback.
        if first.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
