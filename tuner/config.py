"""The pipeline's settings: one typed, validated config per concern, gathered here."""

from __future__ import annotations

from dataclasses import dataclass, field

from model.training import TrainConfig

from ._workers import HEARTBEAT_INTERVAL_S
from .long_run import LongRunConfig
from .lr_sweep import SweepConfig
from .monitor import Monitor
from .selection import SelectionWeights
from .sweet_spot import METHODS, OverfitConfig


@dataclass(frozen=True)
class PipelineConfig:
    study: str = "redheart"
    backup_dir: str = "runs"
    data: str | None = None  # None: the embedded kaomoji corpus
    text_field: str = "text"
    label_fields: tuple[str, ...] = ("label",)
    task_kinds: tuple[tuple[str, str], ...] = ()  # (field, single|multi|regression) pairs
    label_separator: str | None = None  # splits a CSV/TSV multi-label cell
    max_samples: int | None = 10_000
    preset: str = "ngram"
    model: str | None = None  # package.module:factory
    max_length: int | None = None  # None: the preset's
    dropout: float | None = None  # None: the preset's (a --model factory sets its own)
    hf_layer_blocks: int | None = None  # hf: models: layers in this many groups (None: 4)
    groups_file: str | None = None  # TOML: group -> parameter-name prefixes (any model)
    # Recompute each transformer layer in backward instead of keeping its activations (the
    # gradients are the same); None: off, unless --gpu-memory-gib needs it.
    activation_checkpointing: bool | None = None
    gpu_memory_gib: float | None = None  # the budget the memory plan must fit
    device: str = "cpu"
    storage: str | None = None  # None: sqlite:///<backup_dir>/<study>.db
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    dedup_threshold: float = 0.92
    conflict_policy: str = "keep_first"  # or "drop_group"
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    long_run: LongRunConfig = field(default_factory=LongRunConfig)
    selection_weights: SelectionWeights = field(default_factory=SelectionWeights)
    selection_method: str = "normalized"
    overfit: OverfitConfig = field(default_factory=OverfitConfig)
    crossover_trials: int = 30
    # What "better on val" means for every decision of phases 3 and 4 (tuner.monitor).
    monitor: str = "val_loss"
    min_delta: float = 0.0
    # Sweet spots: "auto" = each group's own losses where the model declares them, splicing
    # otherwise; "splice" or "module-loss" for every group that has that evidence.
    sweet_spot_method: str = "auto"
    stop_after: int = 4  # the last phase to run (0-4)
    # Signs of life between workers (see tuner._workers): Optuna's heartbeat on RDB storages.
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S
    grace_period: int | None = None  # None: 3 x heartbeat_interval
    # A worker whose share is done stays until the pipeline is, to take over the work of a
    # worker that dies; False: it leaves at once.
    wait: bool = True

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
        if self.conflict_policy not in ("keep_first", "drop_group"):
            raise ValueError(f"conflict_policy must be keep_first or drop_group, got "
                             f"{self.conflict_policy!r}")
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError(f"val_ratio + test_ratio must be < 1, got "
                             f"{self.val_ratio!r} + {self.test_ratio!r}")

    @property
    def run_monitor(self) -> Monitor:
        """The monitor every decision of phases 3 and 4 uses."""
        return Monitor(self.monitor, self.min_delta)


__all__ = ["PipelineConfig"]
