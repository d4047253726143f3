"""Phase 1's driver: the LR grid as pruned trials, extended beyond an edge the selection
lands on, then the multi-criterion selection written to files, the study and a dashboard
note."""

from __future__ import annotations

import logging
from dataclasses import replace

import optuna

from storage import Session, json_safe, with_stable_timestamp

from .config import PipelineConfig
from .context import RunContext
from .lr_sweep import default_grid, open_sweep_study, run_lr_sweep, study_lrs, sweep_outcome
from .report import lr_section, without_images
from .selection import grid_edge, grid_verdict, next_lr_beyond, select_lr
from .settings import check_study_settings

logger = logging.getLogger(__name__)


def sweep_and_select(storage: optuna.storages.BaseStorage, cfg: PipelineConfig,
                     ctx: RunContext) -> dict:
    """Phase 1: the grid, then, while the selected LR is the largest or smallest LR tried,
    one more point beyond that edge (up to ``extend_grid``). Every decision is derived
    from the study, so a rerun takes the same steps and runs only what is missing."""
    name = f"{cfg.study}-lr-sweep"
    base = tuple(cfg.sweep.lr_grid or default_grid(None if cfg.model else cfg.preset))
    grid = base
    while True:
        sweep_cfg = replace(cfg.sweep, lr_grid=grid, full_epochs_below=min(base))
        study = open_sweep_study(storage, name, sweep_cfg, cfg.train.seed)
        if ctx.settings is not None:  # workers elsewhere share the study, not the folder
            check_study_settings(study, ctx.settings)
        if not study_lrs(study) <= set(grid):  # points an earlier run added: resume them too
            grid = tuple(sorted({*grid, *study_lrs(study)}))
            continue
        run_lr_sweep(study, sweep_cfg, cfg.train, ctx)
        evaluations, excluded, _ = sweep_outcome(study)
        selected = select_lr(evaluations, cfg.selection_weights, cfg.selection_method,
                             excluded)["selected_lr"]
        tried = sorted({*evaluations, *excluded})
        extended = sorted(set(grid) - set(base))
        edge = grid_edge(selected, tried)
        if edge is None or len(extended) >= cfg.sweep.extend_grid:
            break
        new = next_lr_beyond(tried, edge)
        logger.warning("LR sweep: the selected LR %g is the %s LR tried; adding LR %g beyond it "
                       "(extension %d of %d)", selected, "largest" if edge == "upper" else "smallest",
                       new, len(extended) + 1, cfg.sweep.extend_grid)
        grid = tuple(sorted({*grid, new}))
    verdict = grid_verdict(selected, tried, sorted(evaluations), extended, cfg.sweep.extend_grid)
    (logger.info if verdict["interior"] else logger.warning)("LR sweep: %s", verdict["message"])
    return write_selection(study, cfg, ctx.session, verdict)


def write_selection(study: optuna.Study, cfg: PipelineConfig, session: Session,
                    grid: dict | None = None) -> dict:
    """Score the finished LRs; write the report to files, the study and a dashboard note."""
    evaluations, excluded, curves = sweep_outcome(study)
    report = select_lr(evaluations, cfg.selection_weights, cfg.selection_method, excluded)
    if grid is not None:
        report["grid"] = grid
    report = with_stable_timestamp(session.path("lr_sweep", "lr_selection_report.json"), report)
    session.write_json("lr_sweep/lr_selection_report.json", report)
    session.write_json("lr_sweep/lr_curves_data.json", {
        "learning_rates": sorted(curves),
        "train_losses": {f"{lr:g}": [h["train_loss"] for h in curves[lr]] for lr in sorted(curves)},
        "val_losses": {f"{lr:g}": [h["val_loss"] for h in curves[lr]] for lr in sorted(curves)},
        "val_accs": {f"{lr:g}": [h["val_acc"] for h in curves[lr]] for lr in sorted(curves)},
        "convergence_speeds": {f"{lr:g}": [h["convergence_speed"] for h in curves[lr]]
                               for lr in sorted(curves)},
    })
    study.set_user_attr("selection", json_safe(report))
    lines = ["# LR selection", "", *lr_section(report["selected_lr"], report)[2:]]
    from optuna_dashboard import save_note  # lazily: see tuner.dashboard.publish

    save_note(study, without_images(lines))
    return report


__all__ = ["sweep_and_select", "write_selection"]
