"""What is searched and decided: one module per phase, plus the pipeline that runs them."""

from ._workers import INCARNATION_ENV, incarnation
from .analysis import analyze_long_run, intact_checkpoints
from .baselines import BaselineConfig, linear_baseline, majority_class
from .context import RunContext
from .crossover import ResumableTPESampler, assemble_state, load_crossover, run_crossover_study
from .dashboard import ARTIFACT_DIR, publish
from .data_quality import (
    ks_statistic,
    remove_leakage,
    remove_near_duplicates,
    stratified_split,
)
from .distributed import Launch, launch_from_env
from .ensembles import average_states, evaluate_ensemble, greedy_soup, variant_recipes
from .final import Candidate, build_candidates, build_test_table, load_final_model, write_final_model
from .long_run import LongRunConfig, run_long_run
from .lr_sweep import (
    PRESET_GRIDS,
    STRATEGY_GRID,
    SweepConfig,
    default_grid,
    grid_claims,
    open_sweep_study,
    run_lr_sweep,
    sweep_outcome,
)
from .monitor import Monitor
from .pipeline import PipelineConfig, prepare_data, run
from .predict import Predictor, load_predictor, predict
from .pruning import PruneRule, SweepPruner, prune_reason
from .report import run_summary, write_report
from .selection import (
    SelectionWeights,
    criterion_scores,
    final_evaluation,
    grid_edge,
    grid_verdict,
    next_lr_beyond,
    select_lr,
)
from .settings import FORMAT_VERSION, IncompatibleSession, SettingsChanged, check_settings
from .splice import splice_evaluations
from .sweet_spot import OverfitConfig, find_sweet_spots
from .uncertainty import BootstrapConfig, confidence, verdict

__all__ = [
    "ARTIFACT_DIR",
    "FORMAT_VERSION",
    "INCARNATION_ENV",
    "PRESET_GRIDS",
    "STRATEGY_GRID",
    "BaselineConfig",
    "BootstrapConfig",
    "Candidate",
    "IncompatibleSession",
    "Launch",
    "LongRunConfig",
    "Monitor",
    "OverfitConfig",
    "PipelineConfig",
    "Predictor",
    "PruneRule",
    "ResumableTPESampler",
    "RunContext",
    "SelectionWeights",
    "SettingsChanged",
    "SweepConfig",
    "SweepPruner",
    "analyze_long_run",
    "assemble_state",
    "average_states",
    "build_candidates",
    "build_test_table",
    "check_settings",
    "confidence",
    "criterion_scores",
    "default_grid",
    "evaluate_ensemble",
    "final_evaluation",
    "find_sweet_spots",
    "greedy_soup",
    "grid_claims",
    "grid_edge",
    "grid_verdict",
    "incarnation",
    "intact_checkpoints",
    "ks_statistic",
    "launch_from_env",
    "linear_baseline",
    "load_crossover",
    "load_final_model",
    "load_predictor",
    "majority_class",
    "next_lr_beyond",
    "open_sweep_study",
    "predict",
    "prepare_data",
    "prune_reason",
    "publish",
    "remove_leakage",
    "remove_near_duplicates",
    "run",
    "run_crossover_study",
    "run_long_run",
    "run_lr_sweep",
    "run_summary",
    "select_lr",
    "splice_evaluations",
    "stratified_split",
    "sweep_outcome",
    "variant_recipes",
    "verdict",
    "write_final_model",
    "write_report",
]
