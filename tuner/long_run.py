"""Phase 2: the best LR's long run in study ``<study>-long-run``, with modular checkpoints.

One trial; every epoch reports its val loss and stores the metric dict as a user attr,
writes the rolling resume state and, every ``checkpoint_every`` epochs, a modular
checkpoint with its detailed metrics and a progress report. A rerun marks the trial a
dead process left RUNNING as failed and continues its run as a new trial from the
resume state, reporting the epochs done so far again, so the complete trial's reports
equal those of an unbroken run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn
from tqdm.auto import tqdm

from model.groups import GroupSpec
from model.setting import setting
from model.tasks import TaskSpec
from model.training import (
    TrainConfig,
    build_engine,
    distribute,
    run_epoch,
    steps_per_epoch,
    train_one_epoch,
)
from storage import crash_point, json_safe
from storage.checkpoints import CheckpointError, read_resume, save_resume

from ._workers import (
    WORKER_ATTR,
    Heartbeat,
    TrialLost,
    check_still_mine,
    fail_stale_trials,
    trial_heartbeat,
    trial_is_gone,
    worker_id,
)
from .checkpoint_evidence import write_checkpoint
from .claims import own_phase4
from .context import RunContext
from .distributed import (
    GO,
    Launch,
    announce,
    check_tasks,
    process_group,
    share_engine,
    share_go,
    share_split,
    wait_for_long_run,
)
from .early_stop import StopRule, decide, stop_evidence
from .lr_sweep import epoch_attr
from .monitor import VAL_LOSS, Monitor

logger = logging.getLogger(__name__)


CHECKPOINT_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LongRunConfig:
    epochs: int = setting(60, flag="--epochs", group="training", type=int,
                          help="the long run's maximum epochs (the strategy's)")
    checkpoint_every: int = setting(2, flag="--checkpoint-every", group="training", type=int,
                                    help="epochs between modular checkpoints")
    # None: fp32 (kept None so that sessions recorded before the flag resume).
    checkpoint_dtype: str | None = setting(
        None, flag="--checkpoint-dtype", group="training", choices=tuple(CHECKPOINT_DTYPES),
        default_text="fp32",
        help="width of the group weights in modular checkpoints (the resume state keeps full "
             "precision)")
    # The early stop (tuner.early_stop).
    patience: int = setting(
        3, flag="--patience", group="training", type=int,
        help="stop the long run once the monitor, and every group's own val loss where the "
             "model reports one, has not improved for this many checkpoints; 0 = run every epoch")
    min_checkpoints: int = setting(
        4, flag="--min-checkpoints", group="training", type=int,
        help="the fewest checkpoints the long run stops with (the crossover and the soups "
             "choose among them)")

    @property
    def narrowed_dtype(self) -> torch.dtype | None:
        """The checkpoints' group-weight dtype when --checkpoint-dtype narrows it, else None
        (the training weights' own)."""
        return CHECKPOINT_DTYPES[self.checkpoint_dtype or "fp32"]

    def __post_init__(self) -> None:
        StopRule(self.patience, self.min_checkpoints)  # one ValueError per bad value
        if self.checkpoint_dtype is not None and self.checkpoint_dtype not in CHECKPOINT_DTYPES:
            raise ValueError(f"checkpoint_dtype must be fp32, bf16 or fp16, got "
                             f"{self.checkpoint_dtype!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs!r}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every!r}")


def _other_owner(study: optuna.Study, hb: Heartbeat) -> bool:
    """Whether the long run is complete or runs in another live worker. A trial left
    RUNNING by a process that is gone is marked failed; the next trial continues its run
    from the resume state (``_resume`` reports its epochs again)."""
    fail_stale_trials(study, hb)
    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))


def _claim_trial(study: optuna.Study, trial: optuna.Trial, lr: float, hb: Heartbeat) -> bool:
    """Make ``trial`` (new, RUNNING) the long run's; False when an earlier one of another
    worker is (two workers may ask at the same moment: the lower trial number wins)."""
    # The LR is a user attr, not a param: one fixed value is no search space, and the
    # dashboard's parameter-importance panel would draw nonsense for it.
    trial.set_user_attr("lr", lr)
    trial.set_user_attr(WORKER_ATTR, worker_id())
    failed = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    if failed:
        trial.set_user_attr("continues_trial", failed[-1])
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
        if t.number < trial.number and (t.state == TrialState.COMPLETE
                                        or not trial_is_gone(t, hb)):
            trial.set_user_attr("unused", f"trial {t.number} of another worker came first")
            logger.info("long run: trial %d of another worker came first; this one is done",
                        t.number)
            return False
    return True


def run_long_run(study: optuna.Study, lr: float, cfg: LongRunConfig, train_cfg: TrainConfig,
                 ctx: RunContext, monitor: Monitor = VAL_LOSS) -> dict[str, Any] | None:
    """Train (or finish training) the long run, stopping early by ``monitor`` (see
    ``tuner.early_stop``). Returns its summary, or None when another live worker owns it
    (or took it over from this one: ``tuner._workers.check_still_mine``)."""
    hb = ctx.heartbeat
    if not _other_owner(study, hb):
        lost: list[str] = []

        def objective(trial: optuna.Trial) -> float:
            if not _claim_trial(study, trial, lr, hb):
                raise optuna.TrialPruned("another worker's trial came first")
            with trial_heartbeat(trial, hb):
                try:
                    return _train(study, trial, lr, cfg, train_cfg, ctx, monitor)
                except TrialLost as e:
                    lost.append(str(e))
                    raise

        # Optuna's heartbeat thread runs for the whole run on RDB storages; an error or
        # Ctrl-C fails the trial and is raised here (the next run continues it).
        try:
            study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False,
                           show_progress_bar=False)
        except Exception:
            if not lost:
                raise
            # Optuna cannot finish a trial another worker failed: it raises its own error.
            logger.warning("long run: stopped training: %s; waiting like an idle worker",
                           lost[0])
            return None
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return done[0].user_attrs.get("summary") if done else None


def _train(study: optuna.Study, trial: optuna.Trial, lr: float, cfg: LongRunConfig,
           train_cfg: TrainConfig, ctx: RunContext, monitor: Monitor) -> float:
    if ctx.launch is None:
        return _train_ranks(study, trial, lr, cfg, train_cfg, ctx, monitor)
    # torchrun: the followers wait on the job's store for this; then every rank joins.
    trial.set_user_attr("processes", ctx.launch.world)
    announce(ctx.launch, GO, {"lr": lr, "epochs": cfg.epochs})
    with process_group(ctx.launch, ctx.device):
        return _train_ranks(study, trial, lr, cfg, train_cfg, ctx, monitor)


def follow_long_run(launch: Launch, tasks: Sequence[TaskSpec],
                    build: Callable[[], tuple[nn.Module, GroupSpec]], device: str,
                    train_cfg: TrainConfig) -> bool:
    """A torchrun follower (rank > 0): wait for rank 0's long run, train its share of every
    batch in step with it, leave when it ends (rank 0 says before each epoch whether there
    is one: the early stop is rank 0's decision). False when rank 0 finished without one."""
    order = wait_for_long_run(launch)
    if order is None:
        return False
    run_cfg = replace(train_cfg, lr=order["lr"], epochs=order["epochs"], progress=False)
    with process_group(launch, device):
        check_tasks(tasks)
        train = share_split(None)
        torch.manual_seed(run_cfg.seed)
        model, spec = build()
        engine = build_engine(model, spec, tasks, run_cfg, steps_per_epoch(len(train), run_cfg),
                              device)
        start = share_engine(engine, None)
        distribute(engine)
        logger.info("rank %d: training the long run (LR %g) with rank 0 from epoch %d, "
                    "at most to epoch %d", launch.rank, order["lr"], start, order["epochs"])
        epoch = start
        while share_go(None):
            train_one_epoch(engine, train, epoch)
            epoch += 1
    return True


def _train_ranks(study: optuna.Study, trial: optuna.Trial, lr: float, cfg: LongRunConfig,
                 train_cfg: TrainConfig, ctx: RunContext, monitor: Monitor) -> float:
    """The long run on this process (rank 0 of a torchrun job: with its followers)."""
    run_cfg = replace(train_cfg, lr=lr, epochs=cfg.epochs)
    torch.manual_seed(run_cfg.seed)
    model, spec = ctx.build()
    engine = build_engine(model, spec, ctx.tasks, run_cfg, steps_per_epoch(len(ctx.train), run_cfg),
                          ctx.device)
    root = ctx.session.path("checkpoints")
    history, start = _resume(engine, root / "resume", lr, trial)
    checkpoints = [h["epoch"] for h in history if h["epoch"] % cfg.checkpoint_every == 0]
    if ctx.launch is not None:  # the same collectives, in the order follow_long_run makes them
        check_tasks(ctx.tasks)
        share_split(ctx.train)
        share_engine(engine, start)
        distribute(engine)
    rule = StopRule(cfg.patience, cfg.min_checkpoints)
    primary = ctx.tasks[0].name
    # A resumed run whose last checkpoint already decided the stop trains nothing more.
    decision = decide(history, checkpoints, monitor, primary, spec, rule)

    bar = tqdm(range(start, cfg.epochs + 1), desc=f"long run (LR {lr:g})", unit="epoch",
               initial=start - 1, total=cfg.epochs, disable=not train_cfg.progress)
    for epoch in bar:
        if decision["stop"]:
            break
        if ctx.launch is not None:
            share_go(True)  # the followers train this epoch with rank 0
        metrics = json_safe(run_epoch(engine, ctx.train, ctx.val, epoch))
        crash_point(f"long:epoch={epoch}")  # trained, nothing written yet
        try:  # before writing anything: the worker that took the trial over writes now
            check_still_mine(study, trial.number)
        except TrialLost:
            if ctx.launch is not None:
                share_go(False)  # the followers leave with rank 0
            raise
        if ctx.planned_memory_bytes and str(ctx.device).startswith("cuda"):
            # The plan is made from shapes before training, never from this measurement;
            # side by side in every epoch's record they check it.
            metrics["planned_memory_bytes"] = ctx.planned_memory_bytes
            logger.info("long run epoch %d: GPU peak %.2f GiB measured, %.2f GiB planned "
                        "(%.2fx)", epoch, metrics["peak_memory_bytes"] / 2**30,
                        ctx.planned_memory_bytes / 2**30,
                        metrics["peak_memory_bytes"] / ctx.planned_memory_bytes)
        history.append(metrics)
        if epoch % cfg.checkpoint_every == 0:
            decision = decide(history, [*checkpoints, epoch], monitor, primary, spec, rule)
            # The checkpoint the run ends at keeps the EMA (phase 4's "ema" candidate).
            last = decision["stop"] or epoch + cfg.checkpoint_every > cfg.epochs
            write_checkpoint(root, epoch, engine, spec, metrics, history, cfg.epochs,
                             cfg.narrowed_dtype, checkpoints, ctx.session, with_ema=last)
        # Resume state before the Optuna report: a crash in between re-reports from it.
        tensors, plain = engine.state_dict()
        save_resume(root / "resume", epoch, tensors, {"engine": plain, "lr": lr, "history": history})
        trial.report(metrics["val_loss"], epoch)
        trial.set_user_attr(epoch_attr(epoch), metrics)
        bar.set_postfix(val_loss=f"{metrics['val_loss']:.4f}", val_acc=f"{metrics['val_acc']:.3f}")
        logger.info("long run epoch %d/%d: train_loss %.4f val_loss %.4f val_acc %.4f (%.1f s)",
                    epoch, cfg.epochs, metrics["train_loss"], metrics["val_loss"],
                    metrics["val_acc"], metrics["seconds"])
        crash_point(f"long:decided={epoch}")  # the epoch (and a stop) on record, loop not left
    bar.close()
    if ctx.launch is not None:
        share_go(False)  # no more epochs: the followers leave

    best = min(history, key=lambda h: h["val_loss"])
    summary = {"lr": lr, "epochs": history[-1]["epoch"], "max_epochs": cfg.epochs,
               "checkpoints": checkpoints,
               "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
               "final_val_loss": history[-1]["val_loss"], "final_val_acc": history[-1]["val_acc"],
               "early_stop": stop_evidence(decision, history, cfg.epochs),
               "training_complete": True}
    if decision["stop"]:
        logger.info("long run stopped early after epoch %d of %d: %s (saved %d epochs, about "
                    "%.0f s)", history[-1]["epoch"], cfg.epochs, decision["reason"],
                    summary["early_stop"]["epochs_saved"],
                    summary["early_stop"]["seconds_saved_estimate"])
    ctx.session.write_json("checkpoints/early_stop.json", summary["early_stop"])
    trial.set_user_attr("summary", summary)
    own_phase4(study)  # before the trial completes: no window with no owner
    ctx.session.write_json("checkpoints/long_run_summary.json", summary)
    return best["val_loss"]


def _resume(engine: Any, folder: Path, lr: float, trial: optuna.Trial) -> tuple[list[dict], int]:
    """Restore the engine from the resume state; report its epochs to the new trial."""
    try:
        state = read_resume(folder)
    except CheckpointError as e:
        logger.warning("long run: %s; starting from epoch 1", e)
        return [], 1
    if state is None:
        return [], 1
    if state.meta.get("lr") != lr:
        logger.warning("long run: the resume state is for LR %s, not %g: starting from epoch 1",
                       state.meta.get("lr"), lr)
        return [], 1
    engine.load_state_dict(state.tensors, state.meta["engine"])
    history = list(state.meta["history"])
    for h in history:  # a new trial: it inherits every epoch the run has done
        trial.report(h["val_loss"], h["epoch"])
        trial.set_user_attr(epoch_attr(h["epoch"]), h)
    logger.info("long run: resuming after epoch %d from %s", state.epoch, folder)
    return history, state.epoch + 1


__all__ = ["CHECKPOINT_DTYPES", "LongRunConfig", "follow_long_run", "run_long_run"]
