"""Phases 3 and 4's driver, run by the worker that owns them: the overfitting point and
the sweet spots, then the crossover study, ensembles and soups, the test table with its
reference rows, the final model, the report and the dashboard."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import optuna

from model import GroupSpec
from model.hf import is_hf, save_pretrained_folder
from storage import Dataset, crash_point, json_safe, read_json, with_stable_timestamp
from storage.studies import name_metrics

from .analysis import analyze_long_run
from .baselines import linear_baseline, majority_class
from .claims import phase4_heartbeat, release_phase4
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
from .dashboard import publish
from .final import (
    HF_FINAL,
    build_candidates,
    build_test_table,
    choose_final,
    load_final_model,
    write_final_model,
)
from .final_choice import ChoiceConfig
from .holdout import ValSplit, same_rows, split_val
from .monitor import Monitor
from .report import crossover_section, fmt, sweet_spot_section, test_section, without_images, write_report
from .settings import check_study_settings
from .uncertainty import BootstrapConfig

logger = logging.getLogger(__name__)

SCORED_ON_ATTR = "scored_on"  # the crossover study's: which val rows its trials were scored on


def phases_3_4(cfg: PipelineConfig, storage: optuna.storages.BaseStorage, ctx: RunContext,
               long_study: optuna.Study, report: dict, summary: dict, dataset: Dataset,
               splits: dict[str, list[dict]], tokenizer) -> dict:
    """Phase 3 (sweet spots) and phase 4 (crossover, test table, final model), by the
    worker that owns them, renewing its claim while they run."""
    with phase4_heartbeat(long_study, ctx.heartbeat):  # other workers see this one alive
        return _phases_3_4(cfg, storage, ctx, long_study, report, summary, dataset, splits,
                           tokenizer)


def _phases_3_4(cfg: PipelineConfig, storage: optuna.storages.BaseStorage, ctx: RunContext,
                long_study: optuna.Study, report: dict, summary: dict, dataset: Dataset,
                splits: dict[str, list[dict]], tokenizer) -> dict:
    session, train, val = ctx.session, ctx.train, ctx.val
    # -- phase 3: overfitting point and sweet spots (each checkpoint scored on the search
    # rows of val, and each group spliced into the best single checkpoint); the selection
    # rows are held out for the final choice
    crash_point("phase:3")
    split = split_val(val, ctx.tasks[0], cfg.train.seed)
    session.write_json("analysis/val_split.json", split.evidence)
    search = replace(ctx, val=split.search)
    model, spec = ctx.build()
    model.to(ctx.device)  # evaluated on the run's device (the build is on the CPU)
    analysis, history, reports = analyze_long_run(long_study, spec, cfg.overfit, search, model,
                                                  cfg.run_monitor, cfg.sweet_spot_method,
                                                  split.scored_on)
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
    test = dataset.encode(splits["test"], tokenizer)
    # The baselines are fitted on train and tuned on the search rows too.
    references = reference_rows(dataset, {**splits, "val": [splits["val"][i] for i in
                                                            split.search_index]},
                                {"train": train, "val": split.search, "test": test})
    results = run_phase4(cfg, storage, replace(search, test=test), spec, analysis, history,
                         long_study, report, references, dataset.fields[0].classes, tokenizer,
                         split, reports)
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
               tokenizer=None, split: ValSplit | None = None,
               reports: list[dict] | None = None) -> dict:
    """Crossover study, ensembles and soups, the test table, the final model, the report
    and the dashboard; final_results.json last.

    ``ctx.val`` and ``history`` are what the candidates are fitted and nominated on (the
    search rows, ``split``); the final choice reads ``split.selection``. ``reports``: the
    long run's own epoch reports, for the learning curves (default: ``history``)."""
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
    study = crossover_study(storage, f"{cfg.study}-crossover", monitor, cfg.train.seed,
                            split.scored_on if split is not None else None)
    name_metrics(study, [monitor.name])  # the assembled model's value on val
    if ctx.settings is not None:
        check_study_settings(study, ctx.settings)
    run_crossover_study(study, ctx, spec, choices, first, model,
                        cfg.crossover_trials + distinct, damaged, monitor)
    optimized, best_value = best_recipe(study, choices, damaged)
    candidates = build_candidates(root, spec, history, checkpoints, single, sweet, optimized,
                                  model, val, tasks, cfg.device, monitor)
    predictions: dict = {}
    table = build_test_table(model, candidates, val, test, tasks, cfg.device, cfg.train.progress,
                             references, BootstrapConfig(seed=cfg.train.seed), monitor,
                             predictions)
    if predictions:
        session.write_json("final/test_predictions.json", predictions)
    decision = (choose_final(model, candidates, table, split.selection, tasks, cfg.device, monitor,
                             ChoiceConfig(seed=cfg.train.seed)) if split is not None else None)
    recipe = write_final_model(session, table, candidates, monitor, primary, decision)
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
        **({"final_choice": decision | {"val_split": {k: v for k, v in split.evidence.items()
                                                       if k != "selection"}}}
           if decision is not None else {}),
        "optimized_crossover": optimized,
        "crossover_best_value": best_value,
        "skipped_checkpoints": analysis["skipped_checkpoints"],
        "test_table": table,
    }
    results = with_stable_timestamp(session.path("final_results.json"), results)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    search = {"n_complete": len(complete), "best_value": best_value, "monitor": monitor.name,
              "best_params": optimized,
              "trials": [{"number": t.number, "value": t.value, "direction": monitor.direction,
                          "queued": QUEUED_ATTR in t.user_attrs} for t in complete]}
    write_report(session, results, analysis, reports or history, search, report, tasks[0].name)
    session.write_json("final_results.json", results)
    sweep = optuna.load_study(study_name=f"{cfg.study}-lr-sweep", storage=storage)
    notes = {"long_run": without_images(sweet_spot_section(analysis)),
             "crossover": without_images([*crossover_section(search),
                                          *test_section(results, tasks[0].name)])}
    publish(session, sweep, long_study, study, notes, report, analysis, table)
    return results


def crossover_study(storage: optuna.storages.BaseStorage, name: str, monitor: Monitor, seed: int,
                    scored_on: dict | None) -> optuna.Study:
    """The crossover study, its trials scored on ``scored_on`` (the search rows). A study
    whose trials were scored on other rows (a session recorded before the held-out
    selection rows scored them on the whole val) is never mixed with new trials: it is kept
    as ``<name>-whole-val`` and a new one is started."""
    study = optuna.create_study(study_name=name, storage=storage, direction=monitor.direction,
                                load_if_exists=True, sampler=ResumableTPESampler(seed))
    if scored_on is None:
        return study
    recorded = study.user_attrs.get(SCORED_ON_ATTR)
    if recorded is not None and same_rows(recorded, scored_on):
        return study
    if study.get_trials(deepcopy=False):
        archive = f"{name}-whole-val" if recorded is None else f"{name}-{recorded['digest']}"
        names = set(optuna.get_all_study_names(storage))
        if archive not in names:
            optuna.copy_study(from_study_name=name, from_storage=storage, to_storage=storage,
                              to_study_name=archive)
        optuna.delete_study(study_name=name, storage=storage)
        logger.warning("the crossover study %s scored %s; its trials are kept as %s and a new "
                       "study scores recipes on the %d search rows of val", name,
                       "the whole val" if recorded is None else f"rows {recorded['digest']}",
                       archive, scored_on["n"])
        study = optuna.create_study(study_name=name, storage=storage,
                                    direction=monitor.direction,
                                    sampler=ResumableTPESampler(seed))
    study.set_user_attr(SCORED_ON_ATTR, dict(scored_on))
    return study


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


__all__ = ["SCORED_ON_ATTR", "crossover_study", "phases_3_4", "reference_rows", "run_phase4"]
