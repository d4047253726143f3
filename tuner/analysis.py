"""Phase 3, driven: read the long run, check its checkpoints, score each on the search rows
of val (``tuner.holdout``), splice each group into the reference model, and decide the
overfitting point and the sweet spots (``tuner.sweet_spot``, pure) under the run's monitor.
Writes analysis/sweet_spot_analysis.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import optuna
from torch import nn

from model.groups import GroupSpec
from storage import CheckpointError, Session, list_checkpoints, read_json, verify_checkpoint

from .context import RunContext
from .crossover import assemble_state, best_single_epoch, evaluate_state
from .lr_sweep import history_of
from .monitor import VAL_LOSS, Monitor
from .splice import splice_evaluations
from .sweet_spot import OverfitConfig, find_sweet_spots, overfitting_points

logger = logging.getLogger(__name__)


def intact_checkpoints(root: Path, spec: GroupSpec) -> tuple[list[int], dict[int, str]]:
    """Saved checkpoint epochs whose every file matches its manifest (size and sha256) and
    whose manifest covers every group; the damaged ones with the reason, logged."""
    intact, skipped = [], {}
    for epoch in list_checkpoints(root):
        folder = root / f"epoch_{epoch:03d}"
        try:
            manifest = verify_checkpoint(folder)
            groups = {info.get("group") for info in manifest.get("files", {}).values()}
            if manifest.get("epoch") != epoch:
                raise CheckpointError(f"{folder}: the manifest says epoch {manifest.get('epoch')!r}")
            if not set(spec.groups) <= groups:
                raise CheckpointError(f"{folder}: the manifest lists no file for groups "
                                      f"{sorted(set(spec.groups) - groups)}")
        except CheckpointError as e:
            logger.warning("checkpoint epoch %d is damaged and skipped: %s", epoch, e)
            skipped[epoch] = str(e)
            continue
        intact.append(epoch)
    return intact, skipped


def resolve_method(method: str, spec: GroupSpec, monitor: Monitor = VAL_LOSS) -> str:
    """``auto``: the strategy's per-module losses where the model declares any and the
    monitor is the val loss (the module losses are losses); splicing otherwise, which
    follows any monitor (groups without their own losses are spliced either way)."""
    if method != "auto":
        return method
    own = any(spec.group_losses.values())
    return "module-loss" if own and monitor.name == "val_loss" else "splice"


def rescored_history(history: list[dict], checkpoints: list[int], model: nn.Module, root: Path,
                     spec: GroupSpec, ctx: RunContext) -> list[dict]:
    """The epoch reports of the checkpoint epochs with their val figures measured again on
    ``ctx.val`` (the search rows): what every decision of phases 3 and 4 reads. The train
    figures (loss, stability) stay as the long run reported them."""
    by_epoch = {h["epoch"]: h for h in history}
    out = []
    for epoch in checkpoints:
        v = evaluate_state(model, assemble_state(root, {g: epoch for g in spec.groups}, spec),
                           ctx.val, ctx.tasks, ctx.device)
        h = by_epoch[epoch]
        out.append({**h, "val_loss": v["loss"], "val_acc": v["acc"],
                    "val_task_loss": v["task_loss"], "val_module_loss": v["module_loss"],
                    "val_task_metrics": v["task_metrics"],
                    "overfit_gap": v["loss"] - h["train_loss"]})
    return out


def _earlier_splices(session: Session, reference: int,
                     scored_on: dict | None) -> dict[str, dict[int, dict]]:
    """The spliced evaluations a phase 3 that did not finish phase 4 wrote, if it spliced
    into the same reference checkpoint on the same rows."""
    path = session.path("analysis", "sweet_spot_analysis.json")
    if not path.is_file():
        return {}
    try:
        earlier = read_json(path)
    except (OSError, ValueError):
        return {}
    if earlier.get("reference_epoch") != reference or earlier.get("scored_on") != scored_on:
        return {}
    return {g: {int(e): m for e, m in per.items()}
            for g, per in (earlier.get("spliced_metrics") or {}).items()}


def analyze_long_run(study: optuna.Study, spec: GroupSpec, overfit: OverfitConfig,
                     ctx: RunContext, model: nn.Module, monitor: Monitor = VAL_LOSS,
                     method: str = "auto", scored_on: dict | None = None,
                     ) -> tuple[dict, list[dict], list[dict]]:
    """Phase 3 over the long run's epoch reports and checkpoints. ``scored_on`` (the search
    rows' description): the checkpoints are scored again on ``ctx.val`` and every decision
    reads those scores; None: the reports as the long run made them. Returns the analysis,
    the epoch reports the decisions read, and the long run's own reports (for the curves)."""
    start = time.perf_counter()
    session = ctx.session
    trial = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))[0]
    history = history_of(trial)
    root = session.path("checkpoints")
    intact, skipped = intact_checkpoints(root, spec)
    checkpoints = [h["epoch"] for h in history if h["epoch"] in intact]
    if not checkpoints:
        raise CheckpointError(f"{root}: no intact checkpoint to analyze ({len(skipped)} damaged)")
    primary = ctx.tasks[0].name
    reports = history
    if scored_on is not None:
        history = rescored_history(history, checkpoints, model, root, spec, ctx)
    reference = best_single_epoch(history, checkpoints, monitor, primary)
    # Splice only where a sweet spot may lie: up to the overfitting point, except for the
    # independent groups.
    limit = overfitting_points(history, checkpoints, overfit, monitor, primary, len(ctx.val))[
        overfit.decide_by]["overfitting_point"]
    epochs = {g: [c for c in checkpoints if limit is None or g in spec.independent or c <= limit]
              or [checkpoints[0]] for g in spec.groups}
    epochs = {g: sorted({*es, reference}) for g, es in epochs.items()}
    spliced = splice_evaluations(model, root, spec, reference, epochs, ctx.val, ctx.tasks,
                                 ctx.device, ctx.progress,
                                 _earlier_splices(session, reference, scored_on))
    resolved = resolve_method(method, spec, monitor)
    analysis = find_sweet_spots(history, checkpoints, dict(spec.group_losses), spec.independent,
                                overfit, monitor, primary, spliced, resolved, reference,
                                groups=list(spec.groups), val_rows=len(ctx.val))
    analysis["scored_on"] = scored_on
    analysis["method_setting"] = method
    analysis["spliced_metrics"] = {g: {str(e): m for e, m in per.items()} for g, per in spliced.items()}
    analysis["skipped_checkpoints"] = {str(e): why for e, why in skipped.items()}
    session.write_json("analysis/sweet_spot_analysis.json", analysis)
    # Logged, not written: a rerun must leave the evidence byte for byte as it was.
    analysis["seconds"] = time.perf_counter() - start
    return analysis, history, reports


__all__ = ["analyze_long_run", "intact_checkpoints", "rescored_history", "resolve_method"]
