"""Phase 3, driven: read the long run, check its checkpoints, splice each group into the
reference model, and decide the overfitting point and the sweet spots
(``tuner.sweet_spot``, pure) under the run's monitor. Writes
analysis/sweet_spot_analysis.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import optuna
from torch import nn

from model.groups import GroupSpec
from storage import CheckpointError, Session, list_checkpoints, read_json, verify_checkpoint

from .context import RunContext
from .crossover import best_single_epoch
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


def _earlier_splices(session: Session, reference: int) -> dict[str, dict[int, dict]]:
    """The spliced evaluations a phase 3 that did not finish phase 4 wrote, if it spliced
    into the same reference checkpoint."""
    path = session.path("analysis", "sweet_spot_analysis.json")
    if not path.is_file():
        return {}
    try:
        earlier = read_json(path)
    except (OSError, ValueError):
        return {}
    if earlier.get("reference_epoch") != reference:
        return {}
    return {g: {int(e): m for e, m in per.items()}
            for g, per in (earlier.get("spliced_metrics") or {}).items()}


def analyze_long_run(study: optuna.Study, spec: GroupSpec, overfit: OverfitConfig,
                     ctx: RunContext, model: nn.Module, monitor: Monitor = VAL_LOSS,
                     method: str = "auto") -> tuple[dict, list[dict]]:
    """Phase 3 over the long run's epoch reports and checkpoints. Returns the analysis and
    the epoch reports it read."""
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
    reference = best_single_epoch(history, checkpoints, monitor, primary)
    # Splice only where a sweet spot may lie: up to the overfitting point, except for the
    # independent groups.
    limit = overfitting_points(history, checkpoints, overfit, monitor, primary)[
        overfit.decide_by]["overfitting_point"]
    epochs = {g: [c for c in checkpoints if limit is None or g in spec.independent or c <= limit]
              or [checkpoints[0]] for g in spec.groups}
    epochs = {g: sorted({*es, reference}) for g, es in epochs.items()}
    spliced = splice_evaluations(model, root, spec, reference, epochs, ctx.val, ctx.tasks,
                                 ctx.device, ctx.progress, _earlier_splices(session, reference))
    resolved = resolve_method(method, spec, monitor)
    analysis = find_sweet_spots(history, checkpoints, dict(spec.group_losses), spec.independent,
                                overfit, monitor, primary, spliced, resolved, reference,
                                groups=list(spec.groups))
    analysis["method_setting"] = method
    analysis["spliced_metrics"] = {g: {str(e): m for e, m in per.items()} for g, per in spliced.items()}
    analysis["skipped_checkpoints"] = {str(e): why for e, why in skipped.items()}
    session.write_json("analysis/sweet_spot_analysis.json", analysis)
    # Logged, not written: a rerun must leave the evidence byte for byte as it was.
    analysis["seconds"] = time.perf_counter() - start
    return analysis, history


__all__ = ["analyze_long_run", "intact_checkpoints", "resolve_method"]
