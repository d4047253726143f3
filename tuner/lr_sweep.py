"""Phase 1: the LR grid as pruned Optuna trials in study ``<study>-lr-sweep``.

Every grid point trains from the same initial weights for ``epochs`` epochs, reports
its val loss each epoch (and the full metric dict as a user attr) and ends with the
seed's final_evaluation. Rerunning resumes: finished points are not run again, a
point whose trial was left RUNNING by a dead process is failed and retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from model.tasks import TaskSpec
from model.training import EncodedData, TrainConfig, build_engine, evaluate, run_epoch, steps_per_epoch
from storage import Session, crash_point, json_safe

from ._workers import HEARTBEAT_ATTR, WORKER_ATTR, trial_is_gone, worker_id
from .pruning import INITIAL_ATTR, PruneRule, SweepPruner
from .selection import final_evaluation

logger = logging.getLogger(__name__)

SEED_GRID = (1e-5, 5e-5, 1e-4, 2e-4, 5e-4)
# Five points per preset, each spanning at least 20x like the seed's 50x. The seed's grid
# was set for fine-tuning a 730M model; smaller models trained from scratch want larger LRs.
PRESET_GRIDS: dict[str, tuple[float, ...]] = {
    "ngram": (1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
    "tiny": (5e-4, 1e-3, 2e-3, 5e-3, 1e-2),
    "small": (2e-4, 5e-4, 1e-3, 2e-3, 5e-3),
    "base": (5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
    "730m": SEED_GRID,
}


def default_grid(preset: str | None) -> tuple[float, ...]:
    """The LR grid of a preset; the seed's grid for a user's own model (``preset=None``)."""
    return SEED_GRID if preset is None else PRESET_GRIDS.get(preset, SEED_GRID)
_DONE = (TrialState.COMPLETE, TrialState.PRUNED)
_TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class SweepConfig:
    lr_grid: tuple[float, ...] | None = None  # None: the preset's (``default_grid``)
    epochs: int = 5
    extend_grid: int = 2  # points added beyond an edge optimum, one at a time
    divergence_factor: float = 1.5
    prune_margin: float = 0.1
    prune_warmup: int = 2
    stale_after_s: float = 3600.0
    rule: PruneRule = field(init=False)

    def __post_init__(self) -> None:
        if self.lr_grid is not None and not self.lr_grid:
            raise ValueError("the LR grid is empty")
        for lr in self.lr_grid or ():
            if not lr > 0:
                raise ValueError(f"every LR in the grid must be > 0, got {lr!r}")
        if self.lr_grid is not None and len(set(self.lr_grid)) != len(self.lr_grid):
            raise ValueError(f"the LR grid repeats a value: {self.lr_grid!r}")
        if self.extend_grid < 0:
            raise ValueError(f"extend_grid must be >= 0, got {self.extend_grid!r}")
        if self.epochs < 1:
            raise ValueError(f"sweep epochs must be >= 1, got {self.epochs!r}")
        object.__setattr__(self, "rule", PruneRule(self.divergence_factor, self.prune_margin,
                                                   self.prune_warmup, self.epochs))


def epoch_attr(epoch: int) -> str:
    return f"epoch_{epoch:03d}"


def history_of(trial: optuna.trial.FrozenTrial) -> list[dict]:
    """The epoch metric dicts a trial stored, in epoch order."""
    keys = sorted(k for k in trial.user_attrs if k.startswith("epoch_"))
    return [trial.user_attrs[k] for k in keys]


def fail_stale_trials(study: optuna.Study, stale_after_s: float) -> list[optuna.trial.FrozenTrial]:
    """Mark RUNNING trials whose worker is gone as FAIL; returns them."""
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial_is_gone(t, stale_after_s):
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            logger.warning("%s: trial %d (params %s) was left running by a process that is gone: "
                           "marked failed, its point is retried", study.study_name, t.number, t.params)
            stale.append(t)
    return stale


def open_sweep_study(storage: optuna.storages.BaseStorage, name: str, cfg: SweepConfig,
                     seed: int) -> optuna.Study:
    return optuna.create_study(
        study_name=name, storage=storage, direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.GridSampler({"lr": list(cfg.lr_grid)}, seed=seed),
        pruner=SweepPruner(cfg.rule))


def trial_lr(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's LR; a queued (WAITING) trial has it only as a fixed param so far."""
    return t.params.get("lr", t.system_attrs.get("fixed_params", {}).get("lr"))


def _mark_grid_point(study: optuna.Study, trial: optuna.Trial, lr: float) -> None:
    """Give a queued trial the grid bookkeeping GridSampler keeps for its own trials, so
    it counts the point as visited (and its after_trial hook finds a grid_id)."""
    sampler = study.sampler
    if isinstance(sampler, optuna.samplers.GridSampler) and (lr,) in sampler._all_grids:
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, "search_space", sampler._search_space)
        storage.set_trial_system_attr(trial._trial_id, "grid_id", sampler._all_grids.index((lr,)))


_POLL_S = 2.0


class _Duplicate(Exception):
    """A queued trial whose grid point another trial already has."""


def _owner_of(study: optuna.Study, lr: float, number: int, stale_after_s: float) -> int | None:
    """The trial that owns grid point ``lr`` if it is not trial ``number``: the lowest
    numbered one that is finished, queued or running in a live process. Trials are
    numbered in creation order and popped oldest first, so every worker agrees."""
    for t in study.get_trials(deepcopy=False, states=_TAKEN):
        if t.number >= number or trial_lr(t) != lr:
            continue
        if t.state != TrialState.RUNNING or not trial_is_gone(t, stale_after_s):
            return t.number
    return None


def _enqueue_missing(study: optuna.Study, grid: Sequence[float]) -> int:
    """Queue every grid point not finished, running or queued; largest LR first, so a
    diverging LR is pruned at once and the good ones set the bar for the small ones."""
    taken = {trial_lr(t) for t in study.get_trials(deepcopy=False, states=_TAKEN)}
    missing = [lr for lr in sorted(grid, reverse=True) if lr not in taken]
    for lr in missing:
        study.enqueue_trial({"lr": lr})
    return len(missing)


def run_lr_sweep(
    study: optuna.Study,
    cfg: SweepConfig,
    train_cfg: TrainConfig,
    build: Callable[[], tuple[torch.nn.Module, Any]],
    train: EncodedData,
    val: EncodedData,
    tasks: Sequence[TaskSpec],
    device: str,
    session: Session,
) -> None:
    """Run every grid point that has not finished. ``build`` returns (model, GroupSpec)
    with the same initial weights each call."""
    fail_stale_trials(study, cfg.stale_after_s)
    _enqueue_missing(study, cfg.lr_grid)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    done = len([t for t in study.get_trials(deepcopy=False, states=_DONE)])
    logger.info("LR sweep %s: %d of %d grid points done, %d to run", study.study_name,
                done, len(cfg.lr_grid), len(waiting))
    bar = tqdm(total=len(cfg.lr_grid), initial=min(done, len(cfg.lr_grid)), desc="LR sweep",
               unit="trial", disable=not train_cfg.progress)
    ran: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        ran.append(trial._trial_id)
        trial.set_user_attr(WORKER_ATTR, worker_id())
        lr = trial.suggest_float("lr", min(cfg.lr_grid), max(cfg.lr_grid), log=True)
        _mark_grid_point(study, trial, lr)
        owner = _owner_of(study, lr, trial.number, cfg.stale_after_s)
        if owner is not None:
            trial.set_user_attr("duplicate_of", owner)
            raise _Duplicate(f"LR {lr:g} is already taken by trial {owner}")
        return _train_trial(trial, lr, cfg, train_cfg, build, train, val, tasks, device)

    while True:
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if not trial_is_gone(t, cfg.stale_after_s)]
            if not running:
                break
            # Another worker is running grid points: selection needs them all.
            logger.info("LR sweep: waiting for %d grid point(s) running in another worker: %s",
                        len(running), ", ".join(f"LR {trial_lr(t):g}" for t in running))
            time.sleep(_POLL_S)
            continue
        # optimize() pops the oldest queued trial atomically; a queued duplicate (two
        # workers queued the same point) ends as FAIL with its duplicate_of attr.
        study.optimize(objective, n_trials=1, catch=(_Duplicate,))
        frozen = study._storage.get_trial(ran[-1])
        lr = frozen.params["lr"]
        if frozen.state == TrialState.FAIL:
            logger.info("LR %g: queued twice; trial %d runs it, trial %d is skipped", lr,
                        frozen.user_attrs.get("duplicate_of"), frozen.number)
            continue
        if frozen.state == TrialState.PRUNED:
            logger.info("LR %g pruned: %s", lr, frozen.user_attrs.get("pruned_reason"))
        else:
            logger.info("LR %g finished: avg val loss of the last epochs %.4f", lr, frozen.value)
        session.write_json(f"lr_sweep/lr_{lr:g}_metrics.json", {
            "lr": lr, "state": frozen.state.name, "trial_number": frozen.number,
            "config": json_safe(vars(replace(train_cfg, lr=lr))),
            "history": history_of(frozen),
            "final_evaluation": frozen.user_attrs.get("final_evaluation"),
            "pruned_reason": frozen.user_attrs.get("pruned_reason")})
        bar.update(1)
    bar.close()


def _train_trial(trial: optuna.Trial, lr: float, cfg: SweepConfig, train_cfg: TrainConfig,
                 build: Callable, train: EncodedData, val: EncodedData,
                 tasks: Sequence[TaskSpec], device: str) -> float:
    # The sweep trains like the long run (LLRD, smoothing, clipping, cosine over its own
    # epochs) but without R-Drop and EMA, which do not change which LR is best and
    # would double its cost.
    run_cfg = replace(train_cfg, lr=lr, epochs=cfg.epochs, r_drop=0.0, ema_decay=0.0)
    torch.manual_seed(run_cfg.seed)
    model, spec = build()
    engine = build_engine(model, spec, tasks, run_cfg, steps_per_epoch(len(train), run_cfg), device)
    initial = evaluate(model, val, tasks, device=engine.device)["loss"]
    trial.set_user_attr(INITIAL_ATTR, initial)
    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        metrics = run_epoch(engine, train, val, epoch)
        crash_point(f"sweep:lr={lr:g}:epoch={epoch}")  # trained, not yet reported
        history.append(json_safe(metrics))
        trial.set_user_attr(epoch_attr(epoch), history[-1])
        trial.report(metrics["val_loss"], epoch)
        trial.set_user_attr(HEARTBEAT_ATTR, time.time())
        logger.info("LR %g epoch %d/%d: train_loss %.4f val_loss %.4f val_acc %.4f", lr, epoch,
                    cfg.epochs, metrics["train_loss"], metrics["val_loss"], metrics["val_acc"])
        if trial.should_prune():
            trial.set_user_attr("final_evaluation", json_safe(final_evaluation(history)))
            raise optuna.TrialPruned()
    evaluation = final_evaluation(history)
    trial.set_user_attr("final_evaluation", json_safe(evaluation))
    return evaluation["avg_val_loss"]


def study_lrs(study: optuna.Study) -> set[float]:
    """Every LR a trial of the sweep has or is queued with (so a resumed extension is found)."""
    return {lr for t in study.get_trials(deepcopy=False) if (lr := trial_lr(t)) is not None}


def sweep_outcome(study: optuna.Study) -> tuple[dict[float, dict], dict[float, str], dict[float, list]]:
    """(final evaluations of COMPLETE points, why each other point cannot be selected,
    every point's epoch history) from the study."""
    evaluations, excluded, curves = {}, {}, {}
    for t in study.get_trials(deepcopy=False):
        lr = t.params.get("lr")
        if lr is None or t.state in (TrialState.WAITING, TrialState.RUNNING):
            continue
        if t.state == TrialState.COMPLETE:
            evaluations[lr] = t.user_attrs["final_evaluation"]
            excluded.pop(lr, None)
        elif lr not in evaluations:
            excluded[lr] = (f"pruned: {t.user_attrs.get('pruned_reason', 'by the pruner')}"
                            if t.state == TrialState.PRUNED else f"trial {t.state.name.lower()}")
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            curves[lr] = history_of(t)
    return evaluations, excluded, curves
