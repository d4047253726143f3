"""The pipeline's settings: one typed, validated config per concern, gathered here."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from model import PRESETS
from model.hf import HF_LAYER_BLOCKS
from model.setting import SETTING, Setting, setting
from model.training import TrainConfig
from storage.outage import DEFAULT_PATIENCE_S
from storage.studies import default_storage_url

from ._workers import GRACE_FACTOR, HEARTBEAT_INTERVAL_S
from .data_quality import CONFLICT_POLICIES
from .long_run import LongRunConfig
from .lr_sweep import SweepConfig
from .monitor import Monitor
from .selection import SelectionWeights
from .sweet_spot import METHODS, OverfitConfig


def parse_names(text: str) -> tuple[str, ...]:
    """``--label-fields`` text ("a, b") as field names."""
    return tuple(f.strip() for f in str(text).split(",") if f.strip())


def parse_task_kind(text: str) -> tuple[str, str]:
    """``--task-kind`` text ("FIELD=KIND") as (field, kind)."""
    field_name, sep, kind = str(text).partition("=")
    if not sep or not field_name.strip() or kind.strip() not in ("single", "multi", "regression"):
        raise ValueError(f"--task-kind must look like FIELD=single|multi|regression, got {text!r}")
    return field_name.strip(), kind.strip()


def parse_device(name: str) -> str:
    """``--device``: auto resolves to cuda where there is one, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device (use cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return name


@dataclass(frozen=True)
class PipelineConfig:
    study: str = setting(
        "redheart", flag="--study-name", aliases=("--study",), group="study",
        help="study name: session folder and the <name>-lr-sweep / -long-run / -crossover studies")
    backup_dir: str = setting("runs", flag="--backup-dir", group="study",
                              help="where session folders go")
    storage: str | None = setting(
        None, flag="--storage", group="study", default_text="sqlite:///<backup-dir>/<study>.db",
        help="Optuna storage URL (sqlite:///..., postgresql+psycopg://..., mysql+pymysql://..., "
             "journal:///file.log)")
    storage_patience: float = setting(
        DEFAULT_PATIENCE_S, flag="--storage-patience", group="study", type=float,
        help="seconds a PostgreSQL/MySQL storage may be unreachable (a restart, a failover) "
             "before the worker gives up and exits 2; a rerun resumes")
    data: str | None = setting(
        None, flag="--data-path", aliases=("--data",), group="data",
        default_text="the embedded kaomoji corpus",
        help="a JSON list, JSONL, CSV, TSV or Parquet file of labelled texts, or a folder of "
             "train/validation/test files that are the splits")
    text_field: str = setting("text", flag="--text-field", group="data",
                              help="field holding the text")
    label_fields: tuple[str, ...] = setting(
        ("label",), flag="--label-fields", group="data", parse=parse_names, metavar="FIELD,...",
        help="comma-separated label fields, one task each (first = primary)")
    task_kinds: tuple[tuple[str, str], ...] = setting(
        (), flag="--task-kind", group="data", parse=parse_task_kind, repeat=True,
        metavar="FIELD=KIND",
        help="a label field's kind where inference would guess wrong: single, multi or "
             "regression (repeat for several fields)")
    label_separator: str | None = setting(
        None, flag="--label-separator", group="data",
        help="splits a multi-label cell of a CSV/TSV (e.g. '|'); JSON lists in cells need none")
    max_samples: int | None = setting(
        10_000, flag="--max-samples", group="data", type=int,
        help="seeded sample size; of the train file for a folder of splits")
    val_ratio: float = setting(0.1, flag="--val-ratio", group="data", type=float,
                               help="share of the rows in the val split")
    test_ratio: float = setting(
        0.1, flag="--test-ratio", group="data", type=float,
        help="held-out test split no selection sees; 0 = the strategy's two-way split")
    dedup_threshold: float = setting(
        0.92, flag="--dedup-threshold", group="data", type=float,
        help="rapidfuzz ratio / 100 at or above which a later row is a near-duplicate")
    conflict_policy: str = setting(
        "keep_first", flag="--conflict-policy", group="data", choices=CONFLICT_POLICIES,
        help="duplicate groups whose labels disagree: keep the first row, or drop all")
    preset: str = setting(
        "ngram", flag="--preset", group="model",
        help=" | ".join(PRESETS) + ": ngram is the CPU default (hashed character and word "
             "n-grams), ngram-tiny its toy size, the others byte transformers (for GPUs)")
    model: str | None = setting(
        None, flag="--model", group="model",
        help="your own model: package.module:factory, or hf:<folder> (a transformers model "
             "save_pretrained wrote)")
    max_length: int | None = setting(None, flag="--max-length", group="model", type=int,
                                     default_text="the preset's",
                                     help="tokens per text (bytes + CLS)")
    dropout: float | None = setting(
        None, flag="--dropout", group="model", type=float, default_text="the preset's",
        help="dropout of the preset's layers, 0 = off (a --model factory sets its own)")
    hf_layer_blocks: int | None = setting(
        None, flag="--hf-layer-blocks", group="model", type=int,
        default_text=str(HF_LAYER_BLOCKS),
        help="hf: models: the encoder layers in this many contiguous groups")
    groups_file: str | None = setting(
        None, flag="--groups", group="model", metavar="FILE",
        help="TOML file of module groups (name = [parameter-name prefixes]) that replaces the "
             "model's own, for any model")
    # None: off, unless --gpu-memory-gib needs it (kept None so older sessions resume).
    activation_checkpointing: bool | None = setting(
        None, flag="--activation-checkpointing", group="model", switch=True,
        help="recompute each transformer layer in backward instead of keeping its activations "
             "(same gradients, less memory, more compute)")
    gpu_memory_gib: float | None = setting(
        None, flag="--gpu-memory-gib", group="model", type=float,
        help="GPU memory budget the printed memory plan must fit (an 8 GB card: about 7.0); "
             "over it, the fastest option that fits is switched on, else the run is refused")
    device: str = setting("cpu", flag="--device", group="model", parse=parse_device,
                          help="auto | cpu | cuda | cuda:N")
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    long_run: LongRunConfig = field(default_factory=LongRunConfig)
    selection_weights: SelectionWeights = field(default_factory=SelectionWeights)
    selection_method: str = setting(
        "normalized", flag="--selection-method", group="training",
        choices=("normalized", "strategy"), renamed_values={"seed": "strategy"},
        help="LR selection: scale-free criteria, or the strategy's literal formulas ('seed' is "
             "the old name of 'strategy')")
    overfit: OverfitConfig = field(default_factory=OverfitConfig)
    crossover_trials: int = setting(30, flag="--crossover-trials", group="training", type=int,
                                    help="TPE crossover trials after the queued ones")
    # What "better on val" means for every decision of phases 3 and 4 (tuner.monitor).
    monitor: str = setting(
        "val_loss", flag="--monitor", group="training",
        help="what 'better on val' means for every decision of phases 3 and 4 (overfitting "
             "point, sweet spots, best single checkpoint, crossover, soups, final model): "
             "val_loss, val_acc, val_macro_f1 (primary task) or TASK:METRIC (accuracy, "
             "macro_f1, micro_f1, mse, loss); the direction follows the name, ties go to the "
             "lower val loss; phase 1 keeps the strategy's own criteria")
    min_delta: float = setting(
        0.0, flag="--min-delta", group="training", type=float,
        help="the smallest change of the monitor that counts as an improvement when "
             "checkpoints are compared in epoch order")
    sweet_spot_method: str = setting(
        "auto", flag="--sweet-spot-method", group="training", choices=("auto", *METHODS),
        help="splice: each group's sweet spot is the checkpoint whose weights for that group "
             "alone, spliced into the best single checkpoint, score best on val; module-loss: "
             "the strategy's score on the group's own losses; auto: module-loss where the "
             "model declares per-module losses, else splice")
    stop_after: int = setting(4, flag="--stop-after", group="training", type=int,
                              choices=tuple(range(5)), metavar="{0..4}",
                              help="the last phase to run (0: data quality only; 4: everything)")
    # Signs of life between workers (see tuner._workers): Optuna's heartbeat on RDB storages.
    heartbeat_interval: int = setting(
        HEARTBEAT_INTERVAL_S, flag="--heartbeat-interval", group="study", type=int,
        help="seconds between a worker's signs of life (Optuna's heartbeat on "
             "SQLite/PostgreSQL/MySQL)")
    grace_period: int | None = setting(
        None, flag="--grace-period", group="study", type=int,
        default_text=f"{GRACE_FACTOR} x the interval; a worker on the same host is checked by "
                     "pid, at once",
        help="seconds without one after which another worker takes over a trial or phases 3-4 "
             "of a worker on another host")
    # A worker whose share is done stays until the pipeline is, to take over the work of a
    # worker that dies.
    wait: bool = setting(
        True, flag="--no-wait", group="study", switch=False,
        help="leave as soon as this worker's share is done, instead of staying to take over "
             "the long run or phases 3-4 should their worker die")

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples!r}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length!r}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.dropout is not None and self.model is not None:
            raise ValueError(f"--dropout sets a preset's dropout; the --model factory "
                             f"{self.model!r} sets its own")
        if self.gpu_memory_gib is not None and not self.gpu_memory_gib > 0:
            raise ValueError(f"gpu_memory_gib must be > 0, got {self.gpu_memory_gib!r}")
        if self.hf_layer_blocks is not None and self.hf_layer_blocks < 1:
            raise ValueError(f"hf_layer_blocks must be >= 1, got {self.hf_layer_blocks!r}")
        if not 0 < self.val_ratio < 1:
            raise ValueError(f"val_ratio must be in (0, 1), got {self.val_ratio!r}")
        if not 0 <= self.test_ratio < 1:
            raise ValueError(f"test_ratio must be in [0, 1), got {self.test_ratio!r}")
        if self.stop_after not in range(5):
            raise ValueError(f"stop_after must be a phase 0-4, got {self.stop_after!r}")
        if not self.storage_patience > 0:
            raise ValueError(f"storage_patience must be > 0 s, got {self.storage_patience!r}")
        if self.heartbeat_interval < 1:
            raise ValueError(f"heartbeat_interval must be >= 1 s, got {self.heartbeat_interval!r}")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period must be longer than heartbeat_interval "
                             f"({self.heartbeat_interval} s), got {self.grace_period!r}")
        Monitor(self.monitor, self.min_delta)  # one ValueError per bad name or delta
        if self.sweet_spot_method not in ("auto", *METHODS):
            raise ValueError(f"sweet_spot_method must be auto, {' or '.join(METHODS)}, got "
                             f"{self.sweet_spot_method!r}")
        if self.crossover_trials < 0:
            raise ValueError(f"crossover_trials must be >= 0, got {self.crossover_trials!r}")
        if not 0 < self.dedup_threshold <= 1:
            raise ValueError(f"dedup_threshold must be in (0, 1], got {self.dedup_threshold!r}")
        if self.conflict_policy not in CONFLICT_POLICIES:
            raise ValueError(f"conflict_policy must be one of {CONFLICT_POLICIES}, got "
                             f"{self.conflict_policy!r}")
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError(f"val_ratio + test_ratio must be < 1, got "
                             f"{self.val_ratio!r} + {self.test_ratio!r}")

    @property
    def run_monitor(self) -> Monitor:
        """The monitor every decision of phases 3 and 4 uses."""
        return Monitor(self.monitor, self.min_delta)


def declared(cls: type = PipelineConfig, prefix: str = "") -> Iterator[tuple[str, Any, Setting]]:
    """(dotted field path, dataclass field, Setting) of every field that has a flag, in
    declaration order, nested configs in place."""
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if SETTING in f.metadata:
            yield path, f, f.metadata[SETTING]
        elif f.init and dataclasses.is_dataclass(f.default_factory):
            yield from declared(f.default_factory, f"{path}.")


def storage_url(cfg: PipelineConfig) -> str:
    """The run's Optuna storage URL: ``--storage``, else SQLite in the backup folder."""
    return cfg.storage or default_storage_url(cfg.backup_dir, cfg.study)


__all__ = ["PipelineConfig", "declared", "parse_device", "parse_names", "parse_task_kind", "storage_url"]
