"""What is searched and decided: one module per phase, plus the pipeline that runs them."""

from .data_quality import (
    ks_statistic,
    remove_leakage,
    remove_near_duplicates,
    stratified_split,
)
from .long_run import LongRunConfig, run_long_run
from .lr_sweep import SEED_GRID, SweepConfig, open_sweep_study, run_lr_sweep, sweep_outcome
from .pipeline import PipelineConfig, prepare_data, run
from .pruning import PruneRule, SweepPruner, prune_reason
from .selection import SelectionWeights, criterion_scores, final_evaluation, select_lr

__all__ = [
    "SEED_GRID",
    "LongRunConfig",
    "PipelineConfig",
    "PruneRule",
    "SelectionWeights",
    "SweepConfig",
    "SweepPruner",
    "criterion_scores",
    "final_evaluation",
    "ks_statistic",
    "open_sweep_study",
    "prepare_data",
    "prune_reason",
    "remove_leakage",
    "remove_near_duplicates",
    "run",
    "run_long_run",
    "run_lr_sweep",
    "select_lr",
    "stratified_split",
    "sweep_outcome",
]
