"""The pipeline: phases 0 to 4 in order, each writing its evidence.

0 data quality (``prepare``), 1 the LR sweep and the selection, 2 the long run, 3 the
overfitting point and sweet spots, 4 the crossover study, ensembles and soups, the test
table, the final model, the report and the dashboard. Every phase resumes from what the
storage and the session folder hold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import optuna
import torch

from model import ByteTokenizer, GroupSpec, preset_config
from model.groups import load_groups_file, with_groups
from model.hf import is_hf, load_tokenizer, max_positions, save_pretrained_folder
from model.memory import (
    GIB,
    FitOption,
    TrainShape,
    disk_plan,
    estimate_step_seconds,
    fit_options,
    plan_memory,
    plan_table,
)
from model.optimizers import OPTIMIZERS, OPTIONS, available, check_choice
from model.plugin import build
from model.training import resolve_precision
from storage import (
    Dataset,
    Session,
    crash_point,
    json_safe,
    read_json,
)
from storage.studies import (
    create_storage,
    dashboard_command,
    default_storage_url,
    mask_url,
    name_metrics,
)

from ._workers import POLL_S, Heartbeat, storage_heartbeats
from .analysis import analyze_long_run
from .baselines import linear_baseline, majority_class
from .config import PipelineConfig
from .context import RunContext
from .crossover import (
    QUEUED_ATTR,
    ResumableTPESampler,
    best_recipe,
    best_single_epoch,
    recipe_params,
    run_crossover_study,
)
from .dashboard import ARTIFACT_DIR, publish
from .distributed import DONE, Launch, announce, launch_from_env, rank_device
from .final import HF_FINAL, build_candidates, build_test_table, load_final_model, write_final_model
from .long_run import (
    CHECKPOINT_DTYPES,
    PHASE4_DONE_ATTR,
    claim_phase4,
    follow_long_run,
    phase4_heartbeat,
    release_phase4,
    run_long_run,
)
from .lr_sweep import default_grid, open_sweep_study, run_lr_sweep, study_lrs, sweep_outcome
from .prepare import load_data, log_truncation, prepare_data
from .report import (
    crossover_section,
    fmt,
    lr_section,
    sweet_spot_section,
    test_section,
    without_images,
    write_report,
)
from .selection import grid_edge, grid_verdict, next_lr_beyond, select_lr
from .settings import SETTINGS_FILE, check_settings, check_study_settings
from .uncertainty import BootstrapConfig

logger = logging.getLogger(__name__)


def _build_fn(cfg: PipelineConfig, dataset: Dataset, max_length: int):
    """Model factory with fixed initial weights: every call returns the same model."""
    groups = load_groups_file(cfg.groups_file) if cfg.groups_file else None

    def build_fn():
        torch.manual_seed(cfg.train.seed)
        model, spec = build(cfg.model, cfg.preset, dataset.tasks, max_length, cfg.dropout,
                            cfg.hf_layer_blocks, bool(cfg.activation_checkpointing))
        if groups is not None:
            spec = with_groups(spec, groups)
            try:
                spec.partition(model)
            except ValueError as e:
                raise ValueError(f"--groups {cfg.groups_file}: {e}") from None
        return model, spec
    return build_fn


def model_max_length(preset: str, model: str | None, max_length: int | None) -> int:
    """The encoder's input length: given, else the preset's (64 bytes for a --model, 64
    tokens for hf: or its position limit if lower)."""
    if max_length is not None:
        return max_length
    if is_hf(model):
        limit = max_positions(model)
        return min(64, limit) if limit else 64
    return preset_config(preset).max_length if model is None else 64


def make_tokenizer(model: str | None, max_length: int):
    """Bytes for our presets and factories; the model's own tokenizer for hf:."""
    return load_tokenizer(model, max_length) if is_hf(model) else ByteTokenizer(max_length)


def _model_max_length(cfg: PipelineConfig) -> int:
    return model_max_length(cfg.preset, cfg.model, cfg.max_length)


def _precision(cfg: PipelineConfig) -> str:
    """The autocast the engine will use, by name."""
    if not cfg.device.startswith("cuda"):
        return "fp32"
    amp = resolve_precision(cfg.train.precision, torch.device(cfg.device))
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def _shape(cfg: PipelineConfig, max_length: int) -> TrainShape:
    precision = _precision(cfg)
    return TrainShape(cfg.train.batch_size, max_length, precision, cfg.train.r_drop > 0,
                      cfg.train.ema_decay > 0 and cfg.train.ema_device != "cpu",
                      bool(cfg.activation_checkpointing), cfg.train.resolved_optimizer)


def _optimizers_to_try(cfg: PipelineConfig, world: int) -> list[str]:
    """What --gpu-memory-gib may switch to: any optimizer this run can use (installed, on
    this device, at this precision, in ``world`` processes), unless --optimizer names one."""
    if cfg.train.optimizer != "auto":
        return [cfg.train.optimizer]
    usable = []
    for name in OPTIMIZERS:
        try:
            check_choice(name, cfg.device, _precision(cfg), world)
        except ValueError:
            continue
        usable.append(name)
    return usable


def _recorded_before_optimizers(cfg: PipelineConfig) -> PipelineConfig:
    """A session recorded before --optimizer existed trained with AdamW: its rerun keeps
    AdamW (with the budget, the plan now might pick another and refuse the resume)."""
    path = Path(cfg.backup_dir) / cfg.study / SETTINGS_FILE
    if cfg.train.optimizer != "auto" or not path.is_file():
        return cfg
    try:
        recorded = read_json(path).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return cfg  # check_settings names what is wrong with it
    if "train.optimizer" in recorded:
        return cfg
    return replace(cfg, train=replace(cfg.train, optimizer="adamw"))


def _with_option(cfg: PipelineConfig, pick: FitOption) -> PipelineConfig:
    train = replace(cfg.train, optimizer=pick.optimizer)
    if cfg.train.ema_decay > 0 and not pick.ema_on_gpu:
        train = replace(train, ema_device="cpu")
    return replace(cfg, train=train,
                   activation_checkpointing=pick.activation_checkpointing or None)


def memory_plan(cfg: PipelineConfig, model: torch.nn.Module, max_length: int,
                world: int = 1) -> tuple[PipelineConfig, dict]:
    """The GPU memory plan of this run (``model.memory``), printed on CUDA or with a
    budget. Over ``--gpu-memory-gib``: of every combination of the optimizers (unless
    --optimizer names one), activation checkpointing and the EMA on the CPU, the one with
    the fastest estimated step that fits is switched on, and the log says what it costs
    and whether it changes the numerics; otherwise the run is refused with the smallest
    plan's table and what to change. "auto" is resolved here: the returned config names
    the optimizer the run trains with. ``world``: the processes of a torchrun job."""
    pinned = cfg.train.optimizer != "auto"
    if pinned:
        check_choice(cfg.train.optimizer, cfg.device, _precision(cfg), world)
    shape = _shape(cfg, max_length)
    parts = plan_memory(model, shape)
    budget = cfg.gpu_memory_gib
    chosen, candidates, pick, configured = "as configured", [], None, parts["total"]
    if budget is not None and parts["total"] > budget * GIB:
        as_is = estimate_step_seconds(model, shape, cfg.train.grad_accum)["total"]
        candidates = fit_options(model, shape, cfg.train.grad_accum,
                                 _optimizers_to_try(cfg, world))
        fitting = [o for o in candidates if o.total_bytes <= budget * GIB]
        pick = fitting[0] if fitting else min(candidates, key=lambda o: o.total_bytes)
        cfg = _with_option(cfg, pick)
        parts = plan_memory(model, _shape(cfg, max_length))
        if fitting:
            numerics = ("the gradients and updates stay those of fp32 AdamW" if pick.exact else
                        "this changes the numerics: bf16 weights with stochastic rounding and "
                        "8-bit moments, compared with AdamW in the README")
            logger.warning("memory plan: %.2f GiB does not fit --gpu-memory-gib %.2f; %s "
                           "brings it to %.2f GiB, the fastest of %d options that fit "
                           "(estimated step %.2f s, %.2f s as configured; %s): switched on",
                           configured / GIB, budget, pick.describe(),
                           parts["total"] / GIB, len(fitting), pick.step_seconds, as_is,
                           numerics)
            chosen = f"{pick.describe()}, the fastest option that fits"
        else:
            chosen = "the smallest plan this installation can make"
    cfg = replace(cfg, train=replace(cfg.train, optimizer=cfg.train.resolved_optimizer))
    table = plan_table(parts, budget)
    if budget is not None or cfg.device.startswith("cuda"):
        logger.info("GPU memory plan (%s; %s, batch %d x %d tokens, %s):\n%s", chosen,
                    cfg.train.optimizer, cfg.train.batch_size, max_length,
                    _shape(cfg, max_length).precision, "\n".join(table))
    if budget is not None and parts["total"] > budget * GIB:
        missing = [n for n in OPTIMIZERS if not available(n)]
        raise ValueError(
            "the memory plan does not fit --gpu-memory-gib {:.2f}, even with {}:\n{}\nLower "
            "--batch-size or --max-length, switch off R-Drop (--r-drop 0) or the EMA "
            "(--ema-decay 0), or pick a smaller --preset{}{}".format(
                budget, pick.describe() if pick else "the run as configured", "\n".join(table),
                "; without --optimizer the plan may switch optimizers" if pinned else "",
                f"; {', '.join(missing)} need pip install -e '.[gpu]'" if missing else ""))
    # Checkpoints keep the training weights' dtype and the EMA its fp32, unless
    # --checkpoint-dtype narrows both.
    narrow = CHECKPOINT_DTYPES[cfg.long_run.checkpoint_dtype or "fp32"]
    stored = narrow or OPTIONS[cfg.train.optimizer].weights_dtype
    disk = disk_plan(model, cfg.long_run.epochs // cfg.long_run.checkpoint_every,
                     stored.itemsize, cfg.train.ema_decay > 0, optimizer=cfg.train.optimizer,
                     ema_bytes=(narrow or torch.float32).itemsize)
    logger.info("disk plan of the long run: %.2f GiB (%d checkpoints at %s: %.2f GiB, the EMA "
                "once: %.2f GiB, 2 resume states: %.2f GiB)", disk["total"] / GIB,
                cfg.long_run.epochs // cfg.long_run.checkpoint_every,
                str(stored).removeprefix("torch."), disk["checkpoints"] / GIB,
                disk["ema"] / GIB, disk["resume_states"] / GIB)
    return cfg, {"components_bytes": parts, "budget_gib": budget, "chosen": chosen,
                 "optimizer": cfg.train.optimizer,
                 "options": [{**asdict(o), "fits": budget is not None
                              and o.total_bytes <= budget * GIB, "exact": o.exact,
                              "what": o.describe()} for o in candidates],
                 "activation_checkpointing": bool(cfg.activation_checkpointing),
                 "ema_device": cfg.train.ema_device or "with the model", "disk_bytes": disk}


def group_summary(model: torch.nn.Module, spec: GroupSpec) -> dict[str, dict]:
    """Each module group's prefixes and parameter count, in group order."""
    counts = {g: sum(p.numel() for _, p in spec.named_parameters_of(model, g)) for g in spec.groups}
    return {g: {"prefixes": list(spec.groups[g]), "parameters": counts[g],
                "own_loss": list(spec.group_losses.get(g, ())) or None,
                "independent": g in spec.independent} for g in spec.groups}


def storage_url(cfg: PipelineConfig) -> str:
    return cfg.storage or default_storage_url(cfg.backup_dir, cfg.study)


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


def follow(cfg: PipelineConfig, launch: Launch) -> dict:
    """A torchrun rank > 0: reads the data (for its tasks) and the model, never the
    session folder or the storage; trains in rank 0's long run, if there is one."""
    dataset = load_data(cfg)
    max_length = _model_max_length(cfg)
    # The same plan as rank 0's, so every rank trains with the options it switched on (the
    # optimizer and the weights' dtype must match for DDP; checkpointing for the memory).
    model, _ = _build_fn(cfg, dataset, max_length)()
    cfg, _ = memory_plan(_recorded_before_optimizers(cfg), model, max_length, launch.world)
    del model
    build_fn = _build_fn(cfg, dataset, max_length)
    if follow_long_run(launch, tuple(dataset.tasks), build_fn, rank_device(cfg.device, launch),
                       cfg.train):
        logger.info("rank %d: the long run is done; leaving", launch.rank)
    return {}


def _run(cfg: PipelineConfig, launch: Launch | None) -> dict:
    # Everything a user can get wrong is checked before anything is written: the data,
    # the monitor, the model, the backup dir and the storage; phase 0 fails before it writes.
    dataset = load_data(cfg)
    cfg.run_monitor.check(dataset.tasks)
    max_length = _model_max_length(cfg)
    build_fn = _build_fn(cfg, dataset, max_length)
    model, spec = build_fn()  # a bad --model or preset fails here, before any trial starts
    cfg, memory = memory_plan(_recorded_before_optimizers(cfg), model, max_length,
                              launch.world if launch else 1)
    if cfg.activation_checkpointing:
        build_fn = _build_fn(cfg, dataset, max_length)
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
                             grace_period=cfg.grace_period)
    heartbeat = Heartbeat(cfg.heartbeat_interval, cfg.grace_period,
                          by_storage=storage_heartbeats(storage))
    logger.info("session folder: %s; storage: %s", session.root, mask_url(url))
    logger.info("watch it live: %s", dashboard_command(url, session.path(ARTIFACT_DIR)))

    # -- phase 0: data quality
    crash_point("phase:0")
    start = time.perf_counter()
    splits = prepare_data(dataset, cfg, session)
    session.write_json("model_groups.json", groups)  # after the input checks of phase 0
    session.write_json("memory_plan.json", memory)
    tokenizer = make_tokenizer(cfg.model, max_length)
    train, val = (dataset.encode(splits[k], tokenizer) for k in ("train", "val"))
    log_truncation(dataset, tokenizer)
    session.write_json("preprocessing/data_summary.json", {
        "source": dataset.source, "rows_available": dataset.total_rows,
        "rows_sampled": len(dataset.records),
        "split": {k: len(v) for k, v in splits.items()},
        "tasks": [asdict(f) | {"classes": list(f.classes)} for f in dataset.fields],
    })
    logger.info("phase 0 done in %.1f s: %s rows", time.perf_counter() - start,
                " / ".join(f"{k} {len(v)}" for k, v in splits.items()))
    if cfg.stop_after == 0:
        logger.info("stopping after phase 0 (--stop-after 0)")
        return {}
    ctx = RunContext(tasks=tuple(dataset.tasks), build=build_fn, train=train, val=val,
                     session=session, device=rank_device(cfg.device, launch), heartbeat=heartbeat,
                     launch=launch, planned_memory_bytes=memory["components_bytes"]["total"],
                     progress=cfg.train.progress, settings=settings)

    # -- phase 1: LR sweep, then selection
    crash_point("phase:1")
    start = time.perf_counter()
    report = sweep_and_select(storage, cfg, ctx)
    logger.info("phase 1 done in %.1f s: %s", time.perf_counter() - start, report["selection_reason"])
    if cfg.stop_after == 1:
        logger.info("stopping after phase 1 (--stop-after 1)")
        return {}

    # -- phase 2: the long run
    crash_point("phase:2")
    start = time.perf_counter()
    long_study = optuna.create_study(study_name=f"{cfg.study}-long-run", storage=storage,
                                     direction="minimize", load_if_exists=True)
    name_metrics(long_study, ["best_val_loss"])  # intermediate values: val loss per epoch
    check_study_settings(long_study, settings)
    summary = run_long_run(long_study, report["selected_lr"], cfg.long_run, cfg.train, ctx,
                               cfg.run_monitor)
    if summary is None and not cfg.wait:
        logger.info("the long run belongs to another live worker; this one is done (--no-wait)")
        return {}
    if summary is None:
        logger.info("the long run runs in another live worker: waiting, to take it over should "
                    "that worker die (--no-wait leaves now)")
    while summary is None:  # until it completes, or its worker is gone and this one continues it
        time.sleep(POLL_S)
        summary = run_long_run(long_study, report["selected_lr"], cfg.long_run, cfg.train, ctx,
                               cfg.run_monitor)
    logger.info("phase 2 done in %.1f s: best epoch %d (val loss %.4f)", time.perf_counter() - start,
                summary["best_epoch"], summary["best_val_loss"])
    if cfg.stop_after == 2:
        logger.info("stopping after phase 2 (--stop-after 2)")
        return summary
    owner, waited_for = claim_phase4(long_study, ctx.heartbeat), None
    while owner is not None:
        if not cfg.wait:
            logger.info("phases 3 and 4 are running in worker %s; this one is done", owner)
            return {}
        if waited_for is None:
            logger.info("phases 3 and 4 are running in worker %s: waiting, to take them over "
                        "should that worker die", owner)
        waited_for = owner
        time.sleep(POLL_S)
        owner = claim_phase4(long_study, ctx.heartbeat)
    if waited_for is not None and long_study.user_attrs.get(PHASE4_DONE_ATTR):
        release_phase4(long_study)
        logger.info("phases 3 and 4 were run by worker %s; this one is done", waited_for)
        return {}

    with phase4_heartbeat(long_study, ctx.heartbeat):  # other workers see this one alive
        return phases_3_4(cfg, storage, ctx, long_study, report, summary, build_fn, dataset,
                          splits, tokenizer)


def phases_3_4(cfg: PipelineConfig, storage: optuna.storages.BaseStorage, ctx: RunContext,
               long_study: optuna.Study, report: dict, summary: dict, build_fn, dataset: Dataset,
               splits: dict[str, list[dict]], tokenizer) -> dict:
    """Phase 3 (sweet spots) and phase 4 (crossover, test table, final model), by the
    worker that owns them."""
    session, train, val = ctx.session, ctx.train, ctx.val
    # -- phase 3: overfitting point and sweet spots (epoch reports, and each group spliced
    # into the best single checkpoint)
    crash_point("phase:3")
    model, spec = build_fn()
    model.to(ctx.device)  # evaluated on the run's device (the build is on the CPU)
    analysis, history = analyze_long_run(long_study, spec, cfg.overfit, ctx, model,
                                         cfg.run_monitor, cfg.sweet_spot_method)
    del model
    logger.info("phase 3 done in %.1f s: overfitting point %s (%s on %s); sweet spots (%s) %s",
                analysis["seconds"], analysis["overfitting_point"], analysis["decided_by"],
                cfg.monitor, analysis["method"],
                {g: v["epoch"] for g, v in analysis["sweet_spots"].items()})
    if cfg.stop_after == 3:
        release_phase4(long_study)
        logger.info("stopping after phase 3 (--stop-after 3)")
        return summary

    # -- phase 4: crossover search on val, then the test table nothing above has seen
    crash_point("phase:4")
    start = time.perf_counter()
    ctx = replace(ctx, test=dataset.encode(splits["test"], tokenizer))
    references = reference_rows(dataset, splits, {"train": train, "val": val, "test": ctx.test})
    results = run_phase4(cfg, storage, ctx, spec, analysis, history, long_study, report,
                         references, dataset.fields[0].classes, tokenizer)
    release_phase4(long_study, done=True)
    recipe = results["crossover_recipe"]
    logger.info("phase 4 done in %.1f s: final model %s by %s (val loss %.4f, test acc %s); "
                "report in %s", time.perf_counter() - start, recipe["method"], cfg.monitor,
                recipe["val_loss"],
                fmt(recipe["test_acc"]), session.path("final", "report.md"))
    return summary


def run_phase4(cfg: PipelineConfig, storage: optuna.storages.BaseStorage, ctx: RunContext,
               spec: GroupSpec, analysis: dict, history: list[dict], long_study: optuna.Study,
               report: dict, references: dict | None = None, classes: tuple = (),
               tokenizer=None) -> dict:
    """Crossover study, ensembles and soups, the test table, the final model, the report
    and the dashboard; final_results.json last."""
    session, tasks, val, test = ctx.session, ctx.tasks, ctx.val, ctx.test
    monitor, primary = cfg.run_monitor, tasks[0].name
    root = session.path("checkpoints")
    checkpoints = analysis["curves"]["checkpoints"]
    sweet = {g: v["epoch"] for g, v in analysis["sweet_spots"].items()}
    single = best_single_epoch(history, checkpoints, monitor, primary)
    damaged = {int(e) for e in analysis["skipped_checkpoints"]}
    choices = sorted({*checkpoints, *damaged})
    # Every known candidate first: the sweet spots, the best single checkpoint, and the
    # uniform soup (every group's window spans every checkpoint; not a point of the space
    # when a checkpoint is damaged, since a window is consecutive saved checkpoints).
    first = [sweet, {g: single for g in spec.groups}]
    if not damaged:
        first.append({g: list(choices) for g in spec.groups})
    distinct = len({str(sorted(recipe_params(r, choices).items())) for r in first})
    model, _ = ctx.build()
    model.to(ctx.device)
    study = optuna.create_study(study_name=f"{cfg.study}-crossover", storage=storage,
                                direction=monitor.direction, load_if_exists=True,
                                sampler=ResumableTPESampler(cfg.train.seed))
    name_metrics(study, [monitor.name])  # the assembled model's value on val
    if ctx.settings is not None:
        check_study_settings(study, ctx.settings)
    run_crossover_study(study, ctx, spec, choices, first, model,
                        cfg.crossover_trials + distinct, damaged, monitor)
    optimized, best_value = best_recipe(study, choices, damaged)
    candidates = build_candidates(root, spec, history, checkpoints, single, sweet, optimized,
                                  model, val, tasks, cfg.device, monitor)
    table = build_test_table(model, candidates, val, test, tasks, cfg.device, cfg.train.progress,
                             references, BootstrapConfig(seed=cfg.train.seed), monitor)
    recipe = write_final_model(session, table, candidates, monitor, primary)
    if is_hf(cfg.model):  # also as a folder from_pretrained loads
        load_final_model(model, session.root)
        save_pretrained_folder(model, tokenizer,
                               classes, session.path(HF_FINAL))
        recipe["save_pretrained"] = str(session.path(HF_FINAL))
        session.write_json("final/recipe.json", json_safe(recipe))
    preprocessing = session.path("preprocessing")
    results = {
        "session_id": cfg.study,
        "best_lr": report["selected_lr"],
        "sweet_spots": sweet,
        "data_stats": {"duplicates": read_json(preprocessing / "duplicate_removal_stats.json"),
                       "split": read_json(preprocessing / "split_stats.json")},
        "lr_sweep": {k: report[k] for k in ("selected_lr", "selection_score", "all_scores",
                                            "selection_reason", "excluded", "grid") if k in report},
        "training_complete": True,
        "overfitting_point": analysis["overfitting_point"],
        "monitor": monitor.name,
        "monitor_description": monitor.describe(),
        "sweet_spot_method": analysis["method"],
        "crossover_recipe": recipe,
        "optimized_crossover": optimized,
        "crossover_best_value": best_value,
        "skipped_checkpoints": analysis["skipped_checkpoints"],
        "test_table": table,
    }
    results = _with_stable_timestamp(session.path("final_results.json"), results)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    search = {"n_complete": len(complete), "best_value": best_value, "monitor": monitor.name,
              "best_params": optimized,
              "trials": [{"number": t.number, "value": t.value, "direction": monitor.direction,
                          "queued": QUEUED_ATTR in t.user_attrs} for t in complete]}
    write_report(session, results, analysis, history, search, report, tasks[0].name)
    session.write_json("final_results.json", results)
    sweep = optuna.load_study(study_name=f"{cfg.study}-lr-sweep", storage=storage)
    notes = {"long_run": without_images(sweet_spot_section(analysis)),
             "crossover": without_images([*crossover_section(search),
                                          *test_section(results, tasks[0].name)])}
    publish(session, sweep, long_study, study, notes, report, analysis, table)
    return results


def reference_rows(dataset: Dataset, splits: dict[str, list[dict]], encoded: dict) -> dict:
    """The test table's reference rows: the linear baseline (fitted on train, C chosen on
    val) and the majority class, as (how, split -> task -> predictions)."""
    start = time.perf_counter()
    texts = {k: [r[dataset.text_field] for r in splits[k]] for k in encoded}
    targets = {k: d.targets for k, d in encoded.items()}
    linear, how = linear_baseline(texts, targets, dataset.tasks)
    majority = {k: majority_class(targets["train"], dataset.tasks, len(d))
                for k, d in encoded.items() if k != "train"}
    logger.info("phase 4: linear baseline fitted in %.0f s", time.perf_counter() - start)
    return {"linear_baseline": (how, linear),
            "majority_class": ({"predicts": "the train split's class (label) frequencies"}, majority)}


def _with_stable_timestamp(path: Path, payload: dict) -> dict:
    """``payload`` with a timestamp: the earlier one when a rerun reproduces the same
    content, so reruns leave the file (and its dashboard artifact) byte for byte as it was."""
    payload = json_safe({k: v for k, v in payload.items() if k != "timestamp"})
    if path.exists():
        old = read_json(path)
        if "timestamp" in old and {k: v for k, v in old.items() if k != "timestamp"} == payload:
            return payload | {"timestamp": old["timestamp"]}
    return payload | {"timestamp": datetime.now(UTC).isoformat()}


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
    report = _with_stable_timestamp(session.path("lr_sweep", "lr_selection_report.json"), report)
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
