"""Phase 2's driver: the selected LR's long run, run here or waited for while another
live worker runs it (taking it over should that worker die); then the claim on phases 3
and 4; and a torchrun follower's share of the long run."""

from __future__ import annotations

import logging
import time
from typing import Any

import optuna

from storage.studies import name_metrics

from ._workers import POLL_S
from .claims import PHASE4_DONE_ATTR, claim_phase4, release_phase4
from .config import PipelineConfig
from .context import RunContext
from .distributed import Launch, rank_device
from .factory import config_max_length, model_builder
from .long_run import follow_long_run, run_long_run
from .memory_policy import memory_plan, recorded_before_optimizers
from .prepare import load_data
from .settings import check_study_settings

logger = logging.getLogger(__name__)


def open_long_run_study(cfg: PipelineConfig, storage: optuna.storages.BaseStorage,
                        settings: dict[str, Any] | None) -> optuna.Study:
    study = optuna.create_study(study_name=f"{cfg.study}-long-run", storage=storage,
                                direction="minimize", load_if_exists=True)
    name_metrics(study, ["best_val_loss"])  # intermediate values: val loss per epoch
    if settings is not None:
        check_study_settings(study, settings)
    return study


def long_run_phase(cfg: PipelineConfig, study: optuna.Study, lr: float,
                   ctx: RunContext) -> dict[str, Any] | None:
    """The long run's summary once it is complete; None when it belongs to another live
    worker and ``--no-wait`` says to leave."""
    summary = run_long_run(study, lr, cfg.long_run, cfg.train, ctx, cfg.run_monitor)
    if summary is None and not cfg.wait:
        logger.info("the long run belongs to another live worker; this one is done (--no-wait)")
        return None
    if summary is None:
        logger.info("the long run runs in another live worker: waiting, to take it over should "
                    "that worker die (--no-wait leaves now)")
    while summary is None:  # until it completes, or its worker is gone and this one continues it
        time.sleep(POLL_S)
        summary = run_long_run(study, lr, cfg.long_run, cfg.train, ctx, cfg.run_monitor)
    return summary


def own_phases_3_4(cfg: PipelineConfig, study: optuna.Study, ctx: RunContext) -> bool:
    """Whether this worker runs phases 3 and 4: it claims them, or waits while another
    live worker has them (taking them over should it die); False when that worker
    finished them or ``--no-wait`` says to leave."""
    owner, waited_for = claim_phase4(study, ctx.heartbeat), None
    while owner is not None:
        if not cfg.wait:
            logger.info("phases 3 and 4 are running in worker %s; this one is done", owner)
            return False
        if waited_for is None:
            logger.info("phases 3 and 4 are running in worker %s: waiting, to take them over "
                        "should that worker die", owner)
        waited_for = owner
        time.sleep(POLL_S)
        owner = claim_phase4(study, ctx.heartbeat)
    if waited_for is not None and study.user_attrs.get(PHASE4_DONE_ATTR):
        release_phase4(study)
        logger.info("phases 3 and 4 were run by worker %s; this one is done", waited_for)
        return False
    return True


def follow(cfg: PipelineConfig, launch: Launch) -> dict:
    """A torchrun rank > 0: reads the data (for its tasks) and the model, never the
    session folder or the storage; trains in rank 0's long run, if there is one."""
    dataset = load_data(cfg)
    max_length = config_max_length(cfg)
    # The same plan as rank 0's, so every rank trains with the options it switched on (the
    # optimizer and the weights' dtype must match for DDP; checkpointing for the memory).
    model, _ = model_builder(cfg, tuple(dataset.tasks), max_length)()
    cfg, _ = memory_plan(recorded_before_optimizers(cfg), model, max_length, launch.world)
    del model
    build_fn = model_builder(cfg, tuple(dataset.tasks), max_length)
    if follow_long_run(launch, tuple(dataset.tasks), build_fn, rank_device(cfg.device, launch),
                       cfg.train):
        logger.info("rank %d: the long run is done; leaving", launch.rank)
    return {}


__all__ = ["follow", "long_run_phase", "open_long_run_study", "own_phases_3_4"]
