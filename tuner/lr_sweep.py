"""Phase 1: the LR grid as pruned Optuna trials in study ``<study>-lr-sweep``.

Every grid point trains from the same initial weights for ``epochs`` epochs, reports
its val loss each epoch (and the full metric dict as a user attr) and ends with the
strategy's final_evaluation. Rerunning resumes: finished points are not run again, a
point whose trial was left RUNNING by a dead process is failed and retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from model.setting import setting
from model.training import TrainConfig, build_engine, evaluate, run_epoch, steps_per_epoch
from storage import crash_point, json_safe
from storage.studies import name_metrics

from ._workers import (
    POLL_S,
    WORKER_ATTR,
    Heartbeat,
    TrialLost,
    check_still_mine,
    fail_stale_trials,
    trial_heartbeat,
    trial_is_gone,
    worker_id,
)
from .context import RunContext
from .pruning import FULL_EPOCHS_ATTR, INITIAL_ATTR, PruneRule, SweepPruner
from .selection import final_evaluation

logger = logging.getLogger(__name__)

STRATEGY_GRID = (1e-5, 5e-5, 1e-4, 2e-4, 5e-4)
# Five points per preset, each spanning at least 20x like the strategy's 50x. The strategy's grid
# was set for fine-tuning a 730M model; smaller models trained from scratch want larger LRs.
PRESET_GRIDS: dict[str, tuple[float, ...]] = {
    "ngram": (1e-3, 2e-3, 5e-3, 1e-2, 2e-2),
    "tiny": (5e-4, 1e-3, 2e-3, 5e-3, 1e-2),
    "small": (2e-4, 5e-4, 1e-3, 2e-3, 5e-3),
    "base": (5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
    "730m": STRATEGY_GRID,
}
PRESET_GRIDS["ngram-tiny"] = PRESET_GRIDS["ngram"]  # the same model at toy size


def _fmt_grid(grid: tuple[float, ...]) -> str:
    return ",".join(f"{x:g}" for x in grid)


def parse_lr_grid(text: str) -> tuple[float, ...]:
    """``--lr-grid`` text ("1e-3,2e-3") as LRs."""
    try:
        return tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--lr-grid must be comma-separated numbers, got {text!r}") from None


def default_grid(preset: str | None) -> tuple[float, ...]:
    """The LR grid of a preset; the strategy's grid for a user's own model (``preset=None``)."""
    return STRATEGY_GRID if preset is None else PRESET_GRIDS.get(preset, STRATEGY_GRID)


@dataclass(frozen=True)
class SweepConfig:
    lr_grid: tuple[float, ...] | None = setting(
        None, flag="--lr-grid", group="training", parse=parse_lr_grid, metavar="LR,LR,...",
        help="comma-separated LRs of the sweep", default_text="the preset's five: " + "; ".join(
            f"{k}: {_fmt_grid(v)}" for k, v in PRESET_GRIDS.items()) + f"; for a --model: "
            f"{_fmt_grid(STRATEGY_GRID)}")
    epochs: int = setting(5, flag="--sweep-epochs", group="training", type=int,
                          help="epochs per LR")
    extend_grid: int = setting(
        2, flag="--extend-grid", group="training", type=int,
        help="when the selected LR is the largest or smallest tried, add up to N more points "
             "beyond that edge, one at a time (0 = never)")
    divergence_factor: float = 1.5
    prune_margin: float = 0.1
    prune_warmup: int = 2
    # LRs below this run their full epochs unless they diverge (extension points below the
    # base grid's smallest LR; set by phase 1, never a user setting).
    full_epochs_below: float | None = None
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


def open_sweep_study(storage: optuna.storages.BaseStorage, name: str, cfg: SweepConfig,
                     seed: int) -> optuna.Study:
    # Every trial's LR is fixed by its claim (``claim_grid_point``): the sampler never
    # samples, so a plain seeded one does.
    study = optuna.create_study(
        study_name=name, storage=storage, direction="minimize", load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=seed), pruner=SweepPruner(cfg.rule))
    name_metrics(study, [VALUE_NAME])
    return study


VALUE_NAME = "avg_val_loss"  # the sweep's objective, as the dashboard names it


def trial_lr(t: optuna.trial.FrozenTrial) -> float | None:
    """A sweep trial's LR (None for a trial that found no grid point left to claim)."""
    return t.params.get("lr")


def claim_order(grid: Sequence[float]) -> list[float]:
    """The order in which grid points are claimed: largest LR first, so a diverging LR is
    pruned at once and the good ones set the bar for the small ones."""
    return sorted(grid, reverse=True)


def grid_claims(trials: Sequence[optuna.trial.FrozenTrial], grid: Sequence[float],
                is_gone: Callable[[optuna.trial.FrozenTrial], bool]) -> dict[int, float | None]:
    """Which grid point each live or finished trial owns, by trial number.

    Trials are numbered in creation order, so every worker can work out the same claims:
    in number order, a trial that has its LR owns it (the first one does, if two do); a
    RUNNING trial that has none yet gets the first point in ``claim_order`` nobody owns
    (None if none is left). Failed trials and RUNNING ones whose worker ``is_gone`` own
    nothing, so their points are free again.
    """
    owned: set[float] = set()
    claims: dict[int, float | None] = {}
    order = claim_order(grid)
    for t in sorted(trials, key=lambda t: t.number):
        if t.state in (TrialState.FAIL, TrialState.WAITING):
            continue
        if t.state == TrialState.RUNNING and is_gone(t):
            continue
        lr = trial_lr(t)
        if lr is None:
            if t.state != TrialState.RUNNING:
                continue
            lr = next((p for p in order if p not in owned), None)
        elif lr in owned:
            lr = None
        if lr is not None:
            owned.add(lr)
        claims[t.number] = lr
    return claims


def _free_points(study: optuna.Study, grid: Sequence[float], hb: Heartbeat) -> list[float]:
    claims = grid_claims(study.get_trials(deepcopy=False), grid, lambda t: trial_is_gone(t, hb))
    taken = set(claims.values())
    return [lr for lr in claim_order(grid) if lr not in taken]


def run_lr_sweep(study: optuna.Study, cfg: SweepConfig, train_cfg: TrainConfig,
                 ctx: RunContext) -> None:
    """Run every grid point that no trial has finished or runs in a live worker.

    Each point is claimed before it starts (``grid_claims``): a trial is created by
    ``study.optimize`` (which runs Optuna's heartbeat thread on RDB storages), the claims
    are worked out from the trial numbers, and the trial takes its LR as a fixed
    parameter. Workers sharing the storage split the grid without running a point twice.
    """
    hb = ctx.heartbeat
    fail_stale_trials(study, hb)
    grid = cfg.lr_grid
    free = _free_points(study, grid, hb)
    logger.info("LR sweep %s: %d of %d grid points done or running, %d to run",
                study.study_name, len(grid) - len(free), len(grid), len(free))
    bar = tqdm(total=len(grid), initial=len(grid) - len(free), desc="LR sweep", unit="trial",
               disable=not train_cfg.progress)
    waiting_for: set[int] = set()
    while True:
        # Before Optuna's own check inside study.optimize, which fails stale trials silently.
        fail_stale_trials(study, hb)
        if not _free_points(study, grid, hb):
            running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                       if not trial_is_gone(t, hb)]
            if not running:
                break
            # Another worker is running grid points: selection needs them all.
            if {t.number for t in running} != waiting_for:
                waiting_for = {t.number for t in running}
                logger.info("LR sweep: waiting for %d grid point(s) running in another worker: %s",
                            len(running), ", ".join(f"LR {trial_lr(t):g}" for t in running
                                                    if trial_lr(t) is not None))
            time.sleep(POLL_S)
            continue
        ran: dict[str, int | float | str] = {}
        # An error or Ctrl-C fails the trial (its point is free again) and is raised here.
        try:
            study.optimize(_point_objective(study, cfg, train_cfg, ctx, ran), n_trials=1,
                           catch=(), gc_after_trial=False, show_progress_bar=False)
        except Exception:
            # Optuna cannot finish a trial another worker failed: it raises its own error,
            # after ours.
            if "lost" not in ran:
                raise
            logger.warning("LR sweep: stopped training LR %g: %s; back to the grid like an "
                           "idle worker", ran["lr"], ran["lost"])
            continue
        if "lr" not in ran:
            continue
        lr = ran["lr"]
        frozen = study.get_trials(deepcopy=False)[int(ran["number"])]  # numbers are positions
        if frozen.state == TrialState.PRUNED:
            logger.info("LR %g pruned: %s", lr, frozen.user_attrs.get("pruned_reason"))
        else:
            logger.info("LR %g finished: avg val loss of the last epochs %.4f", lr, frozen.value)
        ctx.session.write_json(f"lr_sweep/lr_{lr:g}_metrics.json", {
            "lr": lr, "state": frozen.state.name, "trial_number": frozen.number,
            "config": json_safe(vars(replace(train_cfg, lr=lr))),
            "history": history_of(frozen),
            "final_evaluation": frozen.user_attrs.get("final_evaluation"),
            "pruned_reason": frozen.user_attrs.get("pruned_reason")})
        bar.update(1)
    bar.close()


def _point_objective(study: optuna.Study, cfg: SweepConfig, train_cfg: TrainConfig,
                     ctx: RunContext, ran: dict[str, int | float | str]) -> Callable[[optuna.Trial], float]:
    """The objective of one sweep trial: claim a grid point, train it; ``ran`` gets the
    trial number and LR when a point was claimed."""
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker_id())
        claims = grid_claims(study.get_trials(deepcopy=False), cfg.lr_grid,
                             lambda t: trial_is_gone(t, ctx.heartbeat))
        lr = claims.get(trial.number)
        if lr is None:
            # Another worker claimed the last free point between our look and our ask.
            trial.set_user_attr("unused", "every grid point was claimed by an earlier trial")
            raise optuna.TrialPruned("every grid point was claimed by an earlier trial")
        trial.suggest_float("lr", lr, lr)
        if cfg.full_epochs_below is not None and lr < cfg.full_epochs_below:
            trial.set_user_attr(FULL_EPOCHS_ATTR, True)
        ran.update(number=trial.number, lr=lr)
        with trial_heartbeat(trial, ctx.heartbeat):
            try:
                return _train_trial(trial, lr, cfg, train_cfg, ctx)
            except TrialLost as e:
                ran["lost"] = str(e)
                raise
    return objective


def _train_trial(trial: optuna.Trial, lr: float, cfg: SweepConfig, train_cfg: TrainConfig,
                 ctx: RunContext) -> float:
    # The sweep trains like the long run (LLRD, smoothing, clipping, cosine over its own
    # epochs) but without R-Drop and EMA, which do not change which LR is best and
    # would double its cost.
    run_cfg = replace(train_cfg, lr=lr, epochs=cfg.epochs, r_drop=0.0, ema_decay=0.0)
    torch.manual_seed(run_cfg.seed)
    model, spec = ctx.build()
    engine = build_engine(model, spec, ctx.tasks, run_cfg, steps_per_epoch(len(ctx.train), run_cfg),
                          ctx.device)
    initial = evaluate(model, ctx.val, ctx.tasks, device=engine.device)["loss"]
    trial.set_user_attr(INITIAL_ATTR, initial)
    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        metrics = run_epoch(engine, ctx.train, ctx.val, epoch)
        crash_point(f"sweep:lr={lr:g}:epoch={epoch}")  # trained, not yet reported
        check_still_mine(trial.study, trial.number)
        history.append(json_safe(metrics))
        trial.set_user_attr(epoch_attr(epoch), history[-1])
        trial.report(metrics["val_loss"], epoch)
        logger.info("LR %g epoch %d/%d: train_loss %.4f val_loss %.4f val_acc %.4f", lr, epoch,
                    cfg.epochs, metrics["train_loss"], metrics["val_loss"], metrics["val_acc"])
        if trial.should_prune():
            trial.set_user_attr("final_evaluation", json_safe(final_evaluation(history)))
            trial.set_user_attr("pruned_reason", trial.study.pruner.reason(trial.number))
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
