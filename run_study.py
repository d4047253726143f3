#!/usr/bin/env python
"""redheart-tuner command line: parse flags (and a TOML config), set up logging, run the pipeline.

    python run_study.py                      # embedded corpus, ngram preset, the strategy's protocol
    python run_study.py --data-path my.json --label-fields label --device auto
    python run_study.py --smoke              # the whole pipeline's shape at toy size
    python run_study.py --config study.toml  # flags override the file

Rerun the same command after any interruption: it resumes from the storage and folder.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import tomllib
import warnings
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from model.optimizers import OPTIMIZERS
from model.training import TrainConfig
from storage import read_json
from storage.studies import dashboard_command, mask_url
from tuner.dashboard import ARTIFACT_DIR
from tuner.distributed import end_follower, launch_from_env
from tuner.long_run import LongRunConfig
from tuner.lr_sweep import PRESET_GRIDS, STRATEGY_GRID, SweepConfig
from tuner.pipeline import PipelineConfig, run, storage_url
from tuner.report import run_summary
from tuner.sweet_spot import CRITERIA, METHODS, OverfitConfig

logger = logging.getLogger("run_study")

# --smoke: every phase at toy size (applies where a flag was not given explicitly).
SMOKE = {"preset": "ngram-tiny", "max_samples": 400, "sweep_epochs": 2, "epochs": 4,
         "checkpoint_every": 2, "crossover_trials": 4}
# Old spellings of the strategy's rules ("seed" read as the RNG seed): accepted for now.
_DEPRECATED = {"selection_method": {"seed": "strategy"}, "overfit_criterion": {"seed": "gap-rise"}}


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default: the one place every default lives."""
    f = {f.name: f for f in fields(cls)}[name]
    return f.default if f.default is not MISSING else f.default_factory()


def _fmt_grid(grid: tuple[float, ...]) -> str:
    return ",".join(f"{x:g}" for x in grid)


def build_parser() -> argparse.ArgumentParser:
    """Flags default to None: the config dataclasses fill in what a flag leaves unset, so
    --help (which quotes them), a TOML file and the code cannot disagree."""
    def d(cls: type, name: str) -> str:
        return f"(default: {_default(cls, name)})"

    P, T, S, L = PipelineConfig, TrainConfig, SweepConfig, LongRunConfig
    p = argparse.ArgumentParser(
        prog="run_study.py",
        description="Run the Red Heart training strategy with Optuna: data quality, LR sweep, "
                    "long run with modular checkpoints. Rerun the same command to resume.")
    g = p.add_argument_group("study")
    g.add_argument("--config", help="TOML file of settings (flag names); flags win")
    g.add_argument("--study-name", "--study", dest="study",
                   help=f"study name: session folder and the <name>-lr-sweep / -long-run / "
                        f"-crossover studies {d(P, 'study')}")
    g.add_argument("--backup-dir", help=f"where session folders go {d(P, 'backup_dir')}")
    g.add_argument("--storage",
                   help="Optuna storage URL (sqlite:///..., postgresql+psycopg://..., mysql+pymysql://..., "
                        "journal:///file.log) (default: sqlite:///<backup-dir>/<study>.db)")
    g.add_argument("--seed", type=int,
                   help=f"random seed for sampling, splits and training {d(T, 'seed')}")
    g.add_argument("--smoke", action="store_true", help=f"toy-size run of every phase: {SMOKE}")
    dg = p.add_argument_group("data")
    dg.add_argument("--data-path", "--data", dest="data",
                    help="a JSON list, JSONL, CSV, TSV or Parquet file of labelled texts, or a "
                         "folder of train/validation/test files that are the splits (default: "
                         "the embedded kaomoji corpus)")
    dg.add_argument("--text-field", help=f"field holding the text {d(P, 'text_field')}")
    dg.add_argument("--label-fields",
                    help="comma-separated label fields, one task each (first = primary) "
                         f"(default: {','.join(_default(P, 'label_fields'))})")
    dg.add_argument("--task-kind", action="append", metavar="FIELD=KIND",
                    help="a label field's kind where inference would guess wrong: single, "
                         "multi or regression (repeat for several fields)")
    dg.add_argument("--label-separator",
                    help="splits a multi-label cell of a CSV/TSV (e.g. '|'); JSON lists in "
                         "cells need none")
    dg.add_argument("--max-samples", type=int,
                    help=f"seeded sample size {d(P, 'max_samples')}; of the train file for a "
                         "folder of splits")
    dg.add_argument("--val-ratio", type=float, help=d(P, "val_ratio"))
    dg.add_argument("--test-ratio", type=float,
                    help="held-out test split no selection sees; 0 = the strategy's two-way "
                         f"split {d(P, 'test_ratio')}")
    dg.add_argument("--dedup-threshold", type=float,
                    help="rapidfuzz ratio / 100 at or above which a later row is a "
                         f"near-duplicate {d(P, 'dedup_threshold')}")
    dg.add_argument("--conflict-policy", choices=("keep_first", "drop_group"),
                    help="duplicate groups whose labels disagree: keep the first row, or drop "
                         f"all {d(P, 'conflict_policy')}")
    m = p.add_argument_group("model")
    m.add_argument("--preset", help="ngram (CPU: hashed character n-grams) | ngram-tiny (its toy "
                                    "size) | tiny | small | base | 730m (byte transformers, for "
                                    f"GPUs) {d(P, 'preset')}")
    m.add_argument("--model", help="your own model: package.module:factory, or hf:<folder> "
                                   "(a transformers model save_pretrained wrote)")
    m.add_argument("--groups", dest="groups_file", metavar="FILE",
                   help="TOML file of module groups (name = [parameter-name prefixes]) that "
                        "replaces the model's own, for any model")
    m.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="recompute each transformer layer in backward instead of keeping its "
                        "activations (same gradients, less memory, more compute)")
    m.add_argument("--gpu-memory-gib", type=float,
                   help="GPU memory budget the printed memory plan must fit (an 8 GB card: "
                        "about 7.0); over it, activation checkpointing is switched on if that "
                        "fits, else the run is refused")
    m.add_argument("--hf-layer-blocks", type=int,
                   help="hf: models: the encoder layers in this many contiguous groups "
                        "(default: 4)")
    m.add_argument("--dropout", type=float,
                   help="dropout of the preset's layers, 0 = off (default: the preset's, 0.1)")
    m.add_argument("--max-length", type=int,
                   help="tokens per text (bytes + CLS) (default: the preset's)")
    m.add_argument("--device", help=f"auto | cpu | cuda | cuda:N {d(P, 'device')}")
    t = p.add_argument_group("training")
    t.add_argument("--lr-grid",
                   help="comma-separated LRs of the sweep (default: the preset's five: "
                        f"{'; '.join(f'{k}: {_fmt_grid(v)}' for k, v in PRESET_GRIDS.items())}; "
                        f"for a --model: {_fmt_grid(STRATEGY_GRID)})")
    t.add_argument("--extend-grid", type=int,
                   help="when the selected LR is the largest or smallest tried, add up to N "
                        f"more points beyond that edge, one at a time (0 = never) "
                        f"{d(S, 'extend_grid')}")
    t.add_argument("--sweep-epochs", type=int, help=f"epochs per LR {d(S, 'epochs')}")
    t.add_argument("--epochs", type=int,
                   help=f"the long run's maximum epochs (the strategy's) {d(L, 'epochs')}")
    t.add_argument("--patience", type=int,
                   help="stop the long run once the monitor, and every group's own val loss "
                        "where the model reports one, has not improved for this many "
                        f"checkpoints; 0 = run every epoch {d(L, 'patience')}")
    t.add_argument("--min-checkpoints", type=int,
                   help="the fewest checkpoints the long run stops with (the crossover and "
                        f"the soups choose among them) {d(L, 'min_checkpoints')}")
    t.add_argument("--checkpoint-dtype", choices=("fp32", "bf16", "fp16"),
                   help="width of the group weights in modular checkpoints (the resume state "
                        "keeps full precision) (default: fp32)")
    t.add_argument("--checkpoint-every", type=int,
                   help=f"epochs between modular checkpoints {d(L, 'checkpoint_every')}")
    t.add_argument("--batch-size", type=int, help=d(T, "batch_size"))
    t.add_argument("--gradient-accumulation", "--grad-accum", dest="grad_accum", type=int,
                   help=f"micro-batches per optimizer step {d(T, 'grad_accum')}")
    t.add_argument("--label-smoothing", type=float, help=d(T, "label_smoothing"))
    t.add_argument("--r-drop", type=float, help=f"R-Drop lambda; 0 = off {d(T, 'r_drop')}")
    t.add_argument("--ema-decay", type=float, help=f"0 = no EMA {d(T, 'ema_decay')}")
    t.add_argument("--ema-device", choices=("cpu",),
                   help="keep the EMA copy on the CPU instead of beside the model (GPU memory)")
    t.add_argument("--optimizer", choices=("auto", *OPTIMIZERS),
                   help="adamw: torch's AdamW, fp32 weights; adamw8bit: bf16 weights with "
                        "torchao's 8-bit AdamW; adamw-offload: AdamW's state and step on the "
                        "CPU (CUDA); auto (default): adamw unless --gpu-memory-gib needs "
                        "another (the last two need pip install -e '.[gpu]')")
    t.add_argument("--dense-embeddings", action="store_true",
                   help="train embedding tables a model marks sparse (the n-gram presets') "
                        "densely with the optimizer of the rest, instead of with sparse "
                        "gradients and SparseAdam")
    t.add_argument("--llrd-decay", type=float,
                   help=f"1 = no layer-wise LR decay {d(T, 'llrd_decay')}")
    t.add_argument("--precision", help=f"auto | fp32 | bf16 | fp16 {d(T, 'precision')}")
    t.add_argument("--selection-method", choices=("normalized", "strategy", "seed"),
                   help="LR selection: scale-free criteria, or the strategy's literal formulas "
                        f"('seed' is the old name of 'strategy') {d(P, 'selection_method')}")
    t.add_argument("--crossover-trials", type=int,
                   help=f"TPE crossover trials after the queued ones {d(P, 'crossover_trials')}")
    t.add_argument("--stop-after", type=int, choices=range(5), metavar="{0..4}",
                   help="the last phase to run (0: data quality only; 4: everything) "
                        f"{d(P, 'stop_after')}")
    t.add_argument("--monitor",
                   help="what 'better on val' means for every decision of phases 3 and 4 "
                        "(overfitting point, sweet spots, best single checkpoint, crossover, "
                        "soups, final model): val_loss, val_acc, val_macro_f1 (primary task) or "
                        "TASK:METRIC (accuracy, macro_f1, micro_f1, mse, loss); the direction "
                        "follows the name, ties go to the lower val loss; phase 1 keeps the "
                        f"strategy's own criteria {d(P, 'monitor')}")
    t.add_argument("--min-delta", type=float,
                   help="the smallest change of the monitor that counts as an improvement "
                        f"when checkpoints are compared in epoch order {d(P, 'min_delta')}")
    t.add_argument("--sweet-spot-method", choices=("auto", *METHODS),
                   help="splice: each group's sweet spot is the checkpoint whose weights for "
                        "that group alone, spliced into the best single checkpoint, score best "
                        "on val; module-loss: the strategy's score on the group's own losses; "
                        "auto: module-loss where the model declares per-module losses, else "
                        f"splice {d(P, 'sweet_spot_method')}")
    t.add_argument("--overfit-criterion", choices=(*CRITERIA, "seed"),
                   help="which overfitting criterion bounds the sweet spots (all are reported; "
                        f"'seed' is the old name of 'gap-rise') {d(OverfitConfig, 'decide_by')}")
    g.add_argument("--no-wait", action="store_true",
                   help="leave as soon as this worker's share is done, instead of staying to "
                        "take over the long run or phases 3-4 should their worker die")
    g.add_argument("--heartbeat-interval", type=int,
                   help="seconds between a worker's signs of life (Optuna's heartbeat on "
                        f"SQLite/PostgreSQL/MySQL) {d(P, 'heartbeat_interval')}")
    g.add_argument("--grace-period", type=int,
                   help="seconds without one after which another worker takes over a trial "
                        "or phases 3-4 of a worker on another host (default: 3 x the interval; "
                        "a worker on the same host is checked by pid, at once)")
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--log-level", default="INFO", help="DEBUG also shows Optuna's per-trial lines")
    o.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return p


_RENAMED = {"data_path": "data", "study_name": "study", "gradient_accumulation": "grad_accum"}


def _apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """TOML keys are flag names (dashes or underscores); they become the parser's defaults."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read the config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    known = set(vars(parser.parse_args([])))
    defaults = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        dest = _RENAMED.get(dest, dest)
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


def _task_kind(text: str) -> tuple[str, str]:
    field, sep, kind = str(text).partition("=")
    if not sep or not field.strip() or kind.strip() not in ("single", "multi", "regression"):
        raise ValueError(f"--task-kind must look like FIELD=single|multi|regression, got {text!r}")
    return field.strip(), kind.strip()


def _lr_grid(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--lr-grid must be comma-separated numbers, got {text!r}") from None


def _undeprecate(args: argparse.Namespace) -> None:
    for dest, renames in _DEPRECATED.items():
        old = getattr(args, dest)
        if old in renames:
            flag = "--" + dest.replace("_", "-")
            warnings.warn(f"{flag} {old} is deprecated: use {flag} {renames[old]}",
                          FutureWarning, stacklevel=2)
            setattr(args, dest, renames[old])


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The configs from the flags: a flag left unset keeps the dataclass default (or the
    --smoke size)."""
    _undeprecate(args)
    smoke = SMOKE if args.smoke else {}

    def given(**names: str) -> dict[str, Any]:
        """config field -> flag value, for the flags that were given (or set by --smoke)."""
        out = {}
        for field_name, dest in names.items():
            value = getattr(args, dest)
            value = value if value is not None else smoke.get(dest)
            if value is not None:
                out[field_name] = value
        return out

    train = TrainConfig(**given(batch_size="batch_size", grad_accum="grad_accum",
                                label_smoothing="label_smoothing", r_drop="r_drop",
                                ema_decay="ema_decay", ema_device="ema_device",
                                llrd_decay="llrd_decay", optimizer="optimizer",
                                precision="precision", seed="seed"),
                        progress=not args.no_progress,
                        **({"sparse_embeddings": False} if args.dense_embeddings else {}))
    sweep = given(epochs="sweep_epochs", extend_grid="extend_grid")
    if args.lr_grid is not None:
        sweep["lr_grid"] = _lr_grid(args.lr_grid)
    top = given(study="study", backup_dir="backup_dir", data="data", storage="storage",
                text_field="text_field", max_samples="max_samples", preset="preset",
                model="model", max_length="max_length", dropout="dropout",
                hf_layer_blocks="hf_layer_blocks", groups_file="groups_file",
                activation_checkpointing="activation_checkpointing",
                gpu_memory_gib="gpu_memory_gib",
                val_ratio="val_ratio",
                test_ratio="test_ratio", dedup_threshold="dedup_threshold",
                conflict_policy="conflict_policy", selection_method="selection_method",
                crossover_trials="crossover_trials", stop_after="stop_after",
                monitor="monitor", min_delta="min_delta", sweet_spot_method="sweet_spot_method",
                heartbeat_interval="heartbeat_interval", grace_period="grace_period")
    if args.label_fields is not None:
        top["label_fields"] = tuple(f.strip() for f in args.label_fields.split(",") if f.strip())
    if args.task_kind:
        top["task_kinds"] = tuple(_task_kind(text) for text in args.task_kind)
    if args.label_separator is not None:
        top["label_separator"] = args.label_separator
    if args.data is not None and Path(args.data).is_dir():
        for flag, value in (("--val-ratio", args.val_ratio), ("--test-ratio", args.test_ratio)):
            if value is not None:
                raise ValueError(f"{flag}: the data folder {args.data} gives its own splits "
                                 "(train/validation/test files); drop the flag")
    if args.device is not None:
        top["device"] = _device(args.device)
    if args.no_wait:
        top["wait"] = False
    return PipelineConfig(
        **top, train=train, sweep=SweepConfig(**sweep),
        long_run=LongRunConfig(**given(epochs="epochs", checkpoint_every="checkpoint_every",
                                       checkpoint_dtype="checkpoint_dtype", patience="patience",
                                       min_checkpoints="min_checkpoints")),
        overfit=OverfitConfig(**given(decide_by="overfit_criterion")))


class _DropRaisedTrialErrors(logging.Filter):
    """Optuna logs a trial whose objective raised (Ctrl-C, a full disk, a bad file) as
    failed, with the traceback; the exception goes on to ``main``, which reports it once:
    one line for what a user can fix, the traceback for a bug."""

    def __init__(self) -> None:
        super().__init__()
        self._trial: str | None = None  # "Trial N" whose interrupt was dropped

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], BaseException):
            self._trial = message.partition(" failed")[0]
            return False
        if self._trial and message.startswith(f"{self._trial} failed with value"):
            self._trial = None  # Optuna's second line about the same trial
            return False
        return True


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Optuna's own line per trial repeats ours: shown only when debugging.
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    optuna.logging.set_verbosity(logging.DEBUG if debug else logging.WARNING)
    # Records of Optuna's modules reach the handlers of its root logger: filter there.
    drop = _DropRaisedTrialErrors()
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(drop)


def _print_summary(cfg: PipelineConfig) -> None:
    root = Path(cfg.backup_dir) / cfg.study

    def load(*parts: str) -> dict | None:
        path = root.joinpath(*parts)
        return read_json(path) if path.is_file() else None

    lines = run_summary(load("lr_sweep", "lr_selection_report.json"),
                        load("analysis", "sweet_spot_analysis.json"),
                        load("final_results.json"), str(root / "final" / "report.md"),
                        dashboard_command(storage_url(cfg), root / ARTIFACT_DIR))
    print("\n".join(lines), file=sys.stderr, flush=True)


def build_predict_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_study.py predict",
        description="Predict with a session's final model: one JSON line per input row.")
    p.add_argument("--session", required=True, help="the session folder: <backup-dir>/<study>")
    p.add_argument("--data-path", "--data", dest="data", required=True,
                   help="texts to predict: a JSON list, JSONL, CSV, TSV or Parquet file")
    p.add_argument("--output", required=True, help="where the predictions go (JSON lines)")
    p.add_argument("--text-field", help="field holding the text (default: the session's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--batch-size", type=int, default=256, help="rows per batch (default: 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return p


def predict_main(argv: list[str]) -> int:
    """``run_study.py predict ...``: the final model of a session on a data file."""
    from storage import atomic_write_bytes, read_texts
    from tuner.predict import load_predictor, predict

    args = build_predict_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        predictor = load_predictor(args.session, _device(args.device))
        texts = read_texts(args.data, args.text_field or predictor.text_field)
        with logging_redirect_tqdm():
            rows = predict(predictor, texts, args.batch_size, progress=not args.no_progress)
        lines = [json.dumps({"row": i, "text": t, **r}, ensure_ascii=False)
                 for i, (t, r) in enumerate(zip(texts, rows, strict=True))]
        atomic_write_bytes(Path(args.output), ("\n".join(lines) + "\n").encode("utf-8"))
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(rows)} predictions written to {args.output}", file=sys.stderr)
    return 0


def parse_config(argv: list[str]) -> PipelineConfig:
    """The run's config from command-line flags (and a --config file), as main reads them."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        _apply_config_file(parser, first.config)
    return config_from_args(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        return predict_main(argv[1:])
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    cfg: PipelineConfig | None = None
    try:
        if first.config:
            _apply_config_file(parser, first.config)
        args = parser.parse_args(argv)
        _setup_logging(args.log_level)
        cfg = config_from_args(args)
        follower = launch_from_env() is not None and int(os.environ["RANK"]) > 0
        if follower:  # a torchrun rank > 0: rank 0 shows the run
            cfg = replace(cfg, train=replace(cfg.train, progress=False))
        else:
            artifacts = Path(cfg.backup_dir) / cfg.study / ARTIFACT_DIR
            print(f"watch it live: {dashboard_command(storage_url(cfg), artifacts)}",
                  file=sys.stderr, flush=True)
        # Log lines go through tqdm, so they never land in the middle of a progress bar.
        with logging_redirect_tqdm():
            run(cfg)
        if follower:
            end_follower(0)  # never returns: see tuner.distributed.end_follower for why
        _print_summary(cfg)
    except (ValueError, OSError) as e:
        # Errors a user can cause: a message and a non-zero exit, not a traceback.
        if first.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if not _disk_full(e) or first.debug:
            raise
        where = mask_url(storage_url(cfg)) if cfg is not None else "the storage"
        print(f"error: the Optuna storage {where} ran out of disk space: "
              "free some space, then rerun the same command to resume", file=sys.stderr)
        return 2
    return 0


def _disk_full(e: BaseException) -> bool:
    """SQLite's "database or disk is full", however the storage layers wrap it."""
    while e is not None:
        if "disk is full" in str(e) or getattr(e, "errno", None) == errno.ENOSPC:
            return True
        e = e.__cause__ or e.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
