"""Phases 3 and 4 again, on a copy of a finished session, under other decision settings.

The long run is the expensive part and the decisions after it (monitor, sweet-spot method,
overfitting criterion, crossover budget) read only its epoch reports and checkpoints. A
replay copies the session folder (checkpoints hard-linked: they are never written in
place) and its SQLite storage into another backup dir, forgets phases 3-4 there (the
crossover study, the analysis and final files), records the new settings, and runs the
pipeline, which resumes at phase 3. The source is never touched.

    replay(cfg, "runs/replays/val_acc", monitor="val_acc")

This is how ``bench/crossover_gain.py`` and ``bench/regime.py`` compare monitors and
methods without retraining.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna

from storage import Session, read_json
from storage.studies import default_storage_url

from .claims import PHASE4_ATTR, PHASE4_DONE_ATTR
from .config import PipelineConfig
from .dashboard import ARTIFACT_DIR
from .pipeline import run
from .settings import (
    FORMAT_VERSION,
    SETTINGS_FILE,
    IncompatibleSession,
    fingerprint,
    record_study_settings,
)

logger = logging.getLogger(__name__)

# What a replay may change: the decisions of phases 3 and 4 only.
REPLAYABLE = ("monitor", "min_delta", "sweet_spot_method", "crossover_trials", "overfit_criterion")
# Formats whose phases 0-2 this version reads unchanged (format 4 changed the ngram model
# and the long run, so older sessions cannot be replayed).
_SAME_PHASES_0_2 = (4,)
_DECISION_KEYS = ("monitor", "min_delta", "sweet_spot_method", "overfit.decide_by")
_PHASE_3_4_FILES = ("analysis", "final", "final_results.json", ARTIFACT_DIR)


def _sqlite_path(cfg: PipelineConfig) -> Path:
    url = cfg.storage or default_storage_url(cfg.backup_dir, cfg.study)
    if not url.startswith("sqlite:///"):
        raise ValueError(f"replay copies a SQLite storage, got {url!r}")
    return Path(url.removeprefix("sqlite:///"))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_sqlite(src: Path, dst: Path) -> None:
    """SQLite's own online backup: the copy includes what is still in the source's WAL."""
    with contextlib.closing(sqlite3.connect(src)) as a, contextlib.closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def replay(cfg: PipelineConfig, backup_dir: str | Path, **changes: Any) -> dict[str, Any]:
    """Replay phases 3-4 of the session ``cfg`` names into ``backup_dir`` with ``changes``
    (names of ``REPLAYABLE``); returns the replay's final_results.json."""
    unknown = set(changes) - set(REPLAYABLE)
    if unknown:
        raise ValueError(f"a replay changes only {REPLAYABLE}, got {sorted(unknown)!r}")
    src = Path(cfg.backup_dir) / cfg.study
    if not (src / SETTINGS_FILE).is_file():
        raise ValueError(f"{src}: no session to replay (no {SETTINGS_FILE})")
    if not _sqlite_path(cfg).is_file():
        raise ValueError(f"{_sqlite_path(cfg)}: no storage to replay")
    dst_root = Path(backup_dir)
    dst = dst_root / cfg.study
    if dst.exists():
        raise ValueError(f"{dst}: already exists; a replay writes a new backup dir")
    overfit = changes.pop("overfit_criterion", None)
    new = replace(cfg, backup_dir=str(dst_root), storage=None, stop_after=4, **changes)
    if overfit is not None:
        new = replace(new, overfit=replace(cfg.overfit, decide_by=overfit))

    dst_root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, copy_function=_link_or_copy,
                    ignore=lambda d, names: [n for n in names if Path(d) == src
                                             and n in _PHASE_3_4_FILES])
    _copy_sqlite(_sqlite_path(cfg), _sqlite_path(new))
    # The source's record (as its run resolved it: the optimizer, the data digest), with the
    # decision settings of this replay and any setting added since it was recorded.
    source = read_json(src / SETTINGS_FILE)
    if source.get("format_version") not in _SAME_PHASES_0_2:
        raise IncompatibleSession(f"{src / SETTINGS_FILE}: session format "
                                  f"{source.get('format_version')!r}; a replay reads formats "
                                  f"{_SAME_PHASES_0_2} (their phases 0-2 are the same)")
    recorded = source["settings"]
    now = fingerprint(new)
    settings = {"format_version": FORMAT_VERSION,
                "settings": recorded | {k: v for k, v in now.items()
                                        if k in _DECISION_KEYS or k not in recorded}}
    Session(dst).write_json(SETTINGS_FILE, settings)
    storage = optuna.storages.RDBStorage(default_storage_url(dst_root, cfg.study))
    with contextlib.suppress(KeyError):  # KeyError: the source never reached phase 4
        optuna.delete_study(study_name=f"{cfg.study}-crossover", storage=storage)
    for suffix in ("lr-sweep", "long-run"):
        study = optuna.load_study(study_name=f"{cfg.study}-{suffix}", storage=storage)
        record_study_settings(study, settings)
    long_run = optuna.load_study(study_name=f"{cfg.study}-long-run", storage=storage)
    long_run.set_user_attr(PHASE4_DONE_ATTR, False)
    long_run.set_user_attr(PHASE4_ATTR, None)
    logger.info("replaying phases 3-4 of %s in %s with %s", src, dst, changes or "the same settings")
    run(new)
    return read_json(dst / "final_results.json")


__all__ = ["REPLAYABLE", "replay"]
