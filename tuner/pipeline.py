"""The pipeline: phases 0 to 4 in order, each writing its evidence.

0 data quality (``prepare``), 1 the LR sweep and the selection (``sweep_phase``), 2 the
long run (``long_run_phase``), 3 the overfitting point and sweet spots and 4 the crossover
study, ensembles and soups, the test table, the final model, the report and the dashboard
(``final_phase``). Every phase resumes from what the storage and the session folder hold;
``run_setup`` checks everything a user can get wrong before any of them writes.
"""

from __future__ import annotations

import logging
import time

from storage import crash_point

from .config import PipelineConfig, storage_url
from .context import RunContext
from .distributed import DONE, Launch, announce, launch_from_env, rank_device
from .final_phase import phases_3_4
from .long_run_phase import follow, long_run_phase, open_long_run_study, own_phases_3_4
from .prepare import phase0, prepare_data
from .run_setup import setup_run
from .sweep_phase import sweep_and_select

logger = logging.getLogger(__name__)


def run(cfg: PipelineConfig) -> dict:
    """Run every phase; rerunning the same config resumes. Returns the long run summary.

    Under torchrun, rank 0 runs the pipeline and the other ranks join its long run
    (``tuner.distributed``)."""
    launch = launch_from_env()
    if launch is not None and launch.rank > 0:
        return follow(cfg, launch)
    try:
        return _run(cfg, launch)
    finally:
        if launch is not None:  # followers still waiting for a long run leave
            announce(launch, DONE, {})


def _stop_after(cfg: PipelineConfig, phase: int) -> bool:
    if cfg.stop_after == phase:
        logger.info("stopping after phase %d (--stop-after %d)", phase, phase)
    return cfg.stop_after == phase


def _run(cfg: PipelineConfig, launch: Launch | None) -> dict:
    setup = setup_run(cfg, launch)
    cfg, dataset, session = setup.cfg, setup.dataset, setup.session

    # -- phase 0: data quality
    crash_point("phase:0")
    start = time.perf_counter()
    splits, tokenizer, encoded = phase0(dataset, cfg, session, setup.max_length,
                                        {"model_groups.json": setup.groups,
                                         "memory_plan.json": setup.memory})
    logger.info("phase 0 done in %.1f s: %s rows", time.perf_counter() - start,
                " / ".join(f"{k} {len(v)}" for k, v in splits.items()))
    if _stop_after(cfg, 0):
        return {}
    ctx = RunContext(tasks=tuple(dataset.tasks), build=setup.build, train=encoded["train"],
                     val=encoded["val"], session=session, device=rank_device(cfg.device, launch),
                     heartbeat=setup.heartbeat, launch=launch,
                     planned_memory_bytes=setup.memory["components_bytes"]["total"],
                     progress=cfg.train.progress, settings=setup.settings)

    # -- phase 1: LR sweep, then selection
    crash_point("phase:1")
    start = time.perf_counter()
    report = sweep_and_select(setup.storage, cfg, ctx)
    logger.info("phase 1 done in %.1f s: %s", time.perf_counter() - start, report["selection_reason"])
    if _stop_after(cfg, 1):
        return {}

    # -- phase 2: the long run
    crash_point("phase:2")
    start = time.perf_counter()
    long_study = open_long_run_study(cfg, setup.storage, setup.settings)
    summary = long_run_phase(cfg, long_study, report["selected_lr"], ctx)
    if summary is None:
        return {}
    logger.info("phase 2 done in %.1f s: best epoch %d (val loss %.4f)", time.perf_counter() - start,
                summary["best_epoch"], summary["best_val_loss"])
    if _stop_after(cfg, 2):
        return summary

    # -- phases 3 and 4, by the one worker that owns them
    if not own_phases_3_4(cfg, long_study, ctx):
        return {}
    return phases_3_4(cfg, setup.storage, ctx, long_study, report, summary, dataset, splits,
                      tokenizer)


__all__ = ["PipelineConfig", "prepare_data", "run", "storage_url"]
