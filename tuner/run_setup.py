"""Before phase 0: everything a user can get wrong is checked before anything is written
(the data, the monitor, the model, the memory plan, the session's recorded settings, the
storage), and the run's shared pieces are built once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from model.groups import GroupSpec
from storage import Dataset, Session
from storage.studies import create_storage, dashboard_command, mask_url

from ._workers import Heartbeat, storage_heartbeats
from .config import PipelineConfig, storage_url
from .dashboard import ARTIFACT_DIR
from .distributed import Launch
from .factory import config_max_length, group_summary, model_builder
from .memory_policy import memory_plan, recorded_before_optimizers
from .prepare import load_data
from .settings import as_recorded, check_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSetup:
    """A checked run: its config (with the memory plan's choices), data, model factory,
    session folder, recorded settings and storage."""

    cfg: PipelineConfig
    dataset: Dataset
    max_length: int
    build: Callable[[], tuple[nn.Module, GroupSpec]]
    groups: dict[str, dict]  # group_summary of the model
    memory: dict[str, Any]  # the memory plan, as memory_plan.json stores it
    session: Session
    settings: dict[str, Any]
    storage: optuna.storages.BaseStorage
    heartbeat: Heartbeat


def setup_run(cfg: PipelineConfig, launch: Launch | None) -> RunSetup:
    """Check the run's inputs, build the model once, plan its memory, then open the
    session folder (refusing a rerun with other settings) and the storage."""
    dataset = load_data(cfg)
    cfg.run_monitor.check(dataset.tasks)
    max_length = config_max_length(cfg)
    build_fn = model_builder(cfg, tuple(dataset.tasks), max_length)
    model, spec = build_fn()  # a bad --model or preset fails here, before any trial starts
    cfg, memory = memory_plan(as_recorded(recorded_before_optimizers(cfg)), model, max_length,
                              launch.world if launch else 1)
    if cfg.activation_checkpointing:
        build_fn = model_builder(cfg, tuple(dataset.tasks), max_length)
    logger.info("model: %s with %d parameters", cfg.model or f"RedHeart {cfg.preset}",
                sum(p.numel() for p in model.parameters()))
    groups = group_summary(model, spec)
    logger.info("module groups: %s", "; ".join(
        f"{g} ({v['parameters']:,} parameters: {', '.join(v['prefixes'][:3])}"
        f"{', ...' if len(v['prefixes']) > 3 else ''})" for g, v in groups.items()))
    del model
    session = Session.create(cfg.backup_dir, cfg.study)
    settings = check_settings(session, cfg)  # refuses a rerun with other settings
    url = storage_url(cfg)
    storage = create_storage(url, heartbeat_interval=cfg.heartbeat_interval,
                             grace_period=cfg.grace_period, patience_s=cfg.storage_patience)
    heartbeat = Heartbeat(cfg.heartbeat_interval, cfg.grace_period,
                          by_storage=storage_heartbeats(storage))
    logger.info("session folder: %s; storage: %s", session.root, mask_url(url))
    logger.info("watch it live: %s", dashboard_command(url, session.path(ARTIFACT_DIR)))
    return RunSetup(cfg, dataset, max_length, build_fn, groups, memory, session, settings,
                    storage, heartbeat)


__all__ = ["RunSetup", "setup_run"]
