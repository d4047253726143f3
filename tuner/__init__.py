"""What is searched and decided: one module per phase, plus the pipeline that runs them."""

from .crossover import ResumableTPESampler, assemble_state, load_crossover, run_crossover_study
from .dashboard import ARTIFACT_DIR, publish
from .data_quality import (
    ks_statistic,
    remove_leakage,
    remove_near_duplicates,
    stratified_split,
)
from .ensembles import average_states, evaluate_ensemble, greedy_soup, variant_recipes
from .final import Candidate, build_candidates, build_test_table, load_final_model, write_final_model
from .long_run import LongRunConfig, run_long_run
from .lr_sweep import SEED_GRID, SweepConfig, open_sweep_study, run_lr_sweep, sweep_outcome
from .pipeline import PipelineConfig, prepare_data, run
from .pruning import PruneRule, SweepPruner, prune_reason
from .report import write_report
from .selection import SelectionWeights, criterion_scores, final_evaluation, select_lr
from .sweet_spot import OverfitConfig, find_sweet_spots

__all__ = [
    "ARTIFACT_DIR",
    "SEED_GRID",
    "Candidate",
    "LongRunConfig",
    "OverfitConfig",
    "PipelineConfig",
    "PruneRule",
    "ResumableTPESampler",
    "SelectionWeights",
    "SweepConfig",
    "SweepPruner",
    "assemble_state",
    "average_states",
    "build_candidates",
    "build_test_table",
    "criterion_scores",
    "evaluate_ensemble",
    "final_evaluation",
    "find_sweet_spots",
    "greedy_soup",
    "ks_statistic",
    "load_crossover",
    "load_final_model",
    "open_sweep_study",
    "prepare_data",
    "prune_reason",
    "publish",
    "remove_leakage",
    "remove_near_duplicates",
    "run",
    "run_crossover_study",
    "run_long_run",
    "run_lr_sweep",
    "select_lr",
    "stratified_split",
    "sweep_outcome",
    "variant_recipes",
    "write_final_model",
    "write_report",
]
