"""The pipeline: data -> split -> training, each phase writing its evidence.

Phases that exist so far: 0 (near-duplicate removal, the stratified
length-matched split, the leakage check), 1 (the LR sweep as pruned Optuna trials,
then the multi-criterion selection) and 2 (the selected LR's long run with modular
checkpoints) and 3 (overfitting point and per-group sweet spots from the epoch reports).
Every phase resumes from what the storage and session folder hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import optuna
import torch
from optuna_dashboard import save_note

from model import ByteTokenizer, GroupSpec, preset_config
from model.plugin import build
from model.training import TrainConfig
from storage import (
    CheckpointError,
    Dataset,
    Session,
    crash_point,
    json_safe,
    list_checkpoints,
    load_embedded,
    load_file,
    read_json,
    verify_checkpoint,
)
from storage.studies import create_storage, dashboard_command, default_storage_url, mask_url

from .crossover import ResumableTPESampler, best_recipe, best_single_epoch, run_crossover_study
from .dashboard import ARTIFACT_DIR, publish
from .data_quality import remove_leakage, remove_near_duplicates, stratified_split
from .final import build_candidates, build_test_table, write_final_model
from .long_run import LongRunConfig, claim_phase4, release_phase4, run_long_run
from .lr_sweep import SweepConfig, history_of, open_sweep_study, run_lr_sweep, sweep_outcome
from .report import crossover_section, sweet_spot_section, test_section, without_images, write_report
from .selection import SelectionWeights, select_lr
from .sweet_spot import OverfitConfig, find_sweet_spots

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    study: str = "redheart"
    backup_dir: str = "runs"
    data: str | None = None  # None: the embedded kaomoji corpus
    text_field: str = "text"
    label_fields: tuple[str, ...] = ("label",)
    max_samples: int | None = 10_000
    preset: str = "tiny"
    model: str | None = None  # package.module:factory
    max_length: int | None = None  # None: the preset's
    device: str = "cpu"
    storage: str | None = None  # None: sqlite:///<backup_dir>/<study>.db
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    dedup_threshold: float = 0.92
    conflict_policy: str = "keep_first"  # or "drop_group"
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    long_run: LongRunConfig = field(default_factory=LongRunConfig)
    selection_weights: SelectionWeights = field(default_factory=SelectionWeights)
    selection_method: str = "normalized"
    overfit: OverfitConfig = field(default_factory=OverfitConfig)
    crossover_trials: int = 30
    stop_after: int = 4  # the last phase to run (0-4)

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples!r}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length!r}")
        if not 0 < self.val_ratio < 1:
            raise ValueError(f"val_ratio must be in (0, 1), got {self.val_ratio!r}")
        if not 0 <= self.test_ratio < 1:
            raise ValueError(f"test_ratio must be in [0, 1), got {self.test_ratio!r}")
        if self.stop_after not in range(5):
            raise ValueError(f"stop_after must be a phase 0-4, got {self.stop_after!r}")
        if self.crossover_trials < 0:
            raise ValueError(f"crossover_trials must be >= 0, got {self.crossover_trials!r}")
        if not 0 < self.dedup_threshold <= 1:
            raise ValueError(f"dedup_threshold must be in (0, 1], got {self.dedup_threshold!r}")
        if self.conflict_policy not in ("keep_first", "drop_group"):
            raise ValueError(f"conflict_policy must be keep_first or drop_group, got "
                             f"{self.conflict_policy!r}")
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError(f"val_ratio + test_ratio must be < 1, got "
                             f"{self.val_ratio!r} + {self.test_ratio!r}")


def load_data(cfg: PipelineConfig) -> Dataset:
    if cfg.data is None:
        return load_embedded(cfg.max_samples, cfg.train.seed)
    return load_file(cfg.data, cfg.text_field, cfg.label_fields, max_samples=cfg.max_samples,
                     seed=cfg.train.seed)


def _phase0_key(dataset: Dataset, cfg: PipelineConfig) -> str:
    """sha256 of the input rows and every setting phase 0 depends on."""
    h = hashlib.sha256()
    h.update(json.dumps(dataset.records, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    h.update(json.dumps({"threshold": cfg.dedup_threshold, "policy": cfg.conflict_policy,
                         "val": cfg.val_ratio, "test": cfg.test_ratio, "seed": cfg.train.seed,
                         "text": dataset.text_field, "label": dataset.fields[0].field,
                         "version": 1}).encode())
    return h.hexdigest()


def prepare_data(dataset: Dataset, cfg: PipelineConfig, session: Session) -> dict[str, list[dict]]:
    """Phase 0: dedup, split, leakage check; evidence in <session>/preprocessing/.

    Reuses the stored split when the input and settings hash the same.
    """
    state_path = session.path("preprocessing", "phase0_state.json")
    key = _phase0_key(dataset, cfg)
    if state_path.exists():
        state = read_json(state_path)
        if state.get("key") == key:
            logger.info("phase 0: input and settings unchanged (sha256 %s...): reusing the split",
                        key[:12])
            return {name: [dataset.records[i] for i in idx] for name, idx in state["splits"].items()}
        logger.info("phase 0: input or settings changed: recomputing")

    text_key, label_key = dataset.text_field, dataset.fields[0].field
    kept, dup_stats = remove_near_duplicates(dataset.records, cfg.dedup_threshold, text_key,
                                             label_key, cfg.conflict_policy, cfg.train.progress)
    if len(kept) < 3:
        raise ValueError(f"{dataset.source}: {len(kept)} rows are left after near-duplicate "
                         f"removal (threshold {cfg.dedup_threshold}); need at least 3")
    train, val, test, split_stats = stratified_split(kept, cfg.val_ratio, cfg.test_ratio,
                                                     cfg.train.seed, label_key, text_key)
    val, val_leak = remove_leakage(train, val, cfg.dedup_threshold, text_key, "val")
    test, test_leak = remove_leakage(train, test, cfg.dedup_threshold, text_key, "test")
    if not train or not val:
        raise ValueError(f"{dataset.source}: {len(kept)} rows after dedup are too few for a "
                         f"train/val split with val_ratio {cfg.val_ratio}")
    split_stats.update({"leakage": {"val": val_leak, "test": test_leak},
                        "leakage_detected": val_leak["removed"] + test_leak["removed"],
                        "val_count": len(val), "test_count": len(test)})
    session.write_json("preprocessing/duplicate_removal_stats.json",
                       {**dup_stats, "source": dataset.source, "input_sha256": key})
    session.write_json("preprocessing/split_stats.json", split_stats)
    position = {id(r): i for i, r in enumerate(dataset.records)}
    splits = {"train": train, "val": val, "test": test}
    # Written last: a crash before this line recomputes phase 0 on the next run.
    session.write_json("preprocessing/phase0_state.json", {
        "key": key, "splits": {k: [position[id(r)] for r in v] for k, v in splits.items()}})
    return splits


def _log_truncation(dataset: Dataset, tokenizer: ByteTokenizer) -> None:
    limit = tokenizer.max_length - 1  # one id is the CLS token
    long = [len(r[dataset.text_field].encode("utf-8")) for r in dataset.records]
    over = [n for n in long if n > limit]
    if over:
        logger.info("%d of %d texts are longer than %d bytes and are truncated (longest %d bytes)",
                    len(over), len(long), limit, max(over))


def _build_fn(cfg: PipelineConfig, dataset: Dataset, max_length: int):
    """Model factory with fixed initial weights: every call returns the same model."""
    def build_fn():
        torch.manual_seed(cfg.train.seed)
        return build(cfg.model, cfg.preset, dataset.tasks, max_length)
    return build_fn


def _model_max_length(cfg: PipelineConfig) -> int:
    if cfg.max_length is not None:
        return cfg.max_length
    return preset_config(cfg.preset).max_length if cfg.model is None else 64


def storage_url(cfg: PipelineConfig) -> str:
    return cfg.storage or default_storage_url(cfg.backup_dir, cfg.study)


def run(cfg: PipelineConfig) -> dict:
    """Run every phase; rerunning the same config resumes. Returns the long run summary."""
    # Everything a user can get wrong is checked before anything is written: the data,
    # the model, the backup dir and the storage; phase 0 fails before it writes.
    dataset = load_data(cfg)
    max_length = _model_max_length(cfg)
    build_fn = _build_fn(cfg, dataset, max_length)
    model, _ = build_fn()  # a bad --model or preset fails here, before any trial starts
    logger.info("model: %s with %d parameters", cfg.model or f"RedHeart {cfg.preset}",
                sum(p.numel() for p in model.parameters()))
    del model
    session = Session.create(cfg.backup_dir, cfg.study)
    url = storage_url(cfg)
    storage = create_storage(url)
    logger.info("session folder: %s; storage: %s", session.root, mask_url(url))
    logger.info("watch it live: %s", dashboard_command(url, session.path(ARTIFACT_DIR)))

    # -- phase 0: data quality
    crash_point("phase:0")
    splits = prepare_data(dataset, cfg, session)
    tokenizer = ByteTokenizer(max_length)
    train, val = (dataset.encode(splits[k], tokenizer) for k in ("train", "val"))
    _log_truncation(dataset, tokenizer)
    session.write_json("preprocessing/data_summary.json", {
        "source": dataset.source, "rows_available": dataset.total_rows,
        "rows_sampled": len(dataset.records),
        "split": {k: len(v) for k, v in splits.items()},
        "tasks": [asdict(f) | {"classes": list(f.classes)} for f in dataset.fields],
    })
    if cfg.stop_after == 0:
        logger.info("stopping after phase 0 (--stop-after 0)")
        return {}

    # -- phase 1: LR sweep, then selection
    crash_point("phase:1")
    start = time.perf_counter()
    sweep_study = open_sweep_study(storage, f"{cfg.study}-lr-sweep", cfg.sweep, cfg.train.seed)
    run_lr_sweep(sweep_study, cfg.sweep, cfg.train, build_fn, train, val, dataset.tasks,
                 cfg.device, session)
    report = write_selection(sweep_study, cfg, session)
    logger.info("phase 1 done in %.0f s: %s", time.perf_counter() - start, report["selection_reason"])
    if cfg.stop_after == 1:
        logger.info("stopping after phase 1 (--stop-after 1)")
        return {}

    # -- phase 2: the long run
    crash_point("phase:2")
    start = time.perf_counter()
    long_study = optuna.create_study(study_name=f"{cfg.study}-long-run", storage=storage,
                                     direction="minimize", load_if_exists=True)
    summary = run_long_run(long_study, report["selected_lr"], cfg.long_run, cfg.train, build_fn,
                           train, val, dataset.tasks, cfg.device, session)
    if summary is None:
        logger.info("the long run belongs to another live worker; this one is done")
        return {}
    logger.info("phase 2 done in %.0f s: best epoch %d (val loss %.4f)", time.perf_counter() - start,
                summary["best_epoch"], summary["best_val_loss"])
    if cfg.stop_after == 2:
        logger.info("stopping after phase 2 (--stop-after 2)")
        return summary
    owner = claim_phase4(long_study, cfg.long_run.stale_after_s)
    if owner is not None:
        logger.info("phases 3 and 4 are running in worker %s; this one is done", owner)
        return {}

    # -- phase 3: overfitting point and sweet spots (metrics only, no weights loaded)
    crash_point("phase:3")
    _, spec = build_fn()
    analysis = analyze_long_run(long_study, spec, cfg.overfit, session)
    logger.info("phase 3: overfitting point %s (%s); sweet spots %s", analysis["overfitting_point"],
                analysis["decided_by"],
                {g: v["epoch"] for g, v in analysis["sweet_spots"].items()})
    if cfg.stop_after == 3:
        release_phase4(long_study)
        logger.info("stopping after phase 3 (--stop-after 3)")
        return summary

    # -- phase 4: crossover search on val, then the test table nothing above has seen
    crash_point("phase:4")
    start = time.perf_counter()
    test = dataset.encode(splits["test"], tokenizer)
    results = run_phase4(cfg, storage, session, spec, analysis, long_study, report, build_fn,
                         val, test, dataset.tasks)
    release_phase4(long_study)
    recipe = results["crossover_recipe"]
    logger.info("phase 4 done in %.0f s: final model %s (val loss %.4f, test acc %s); report in %s",
                time.perf_counter() - start, recipe["method"], recipe["val_loss"],
                recipe["test_acc"], session.path("final", "report.md"))
    return summary


def run_phase4(cfg: PipelineConfig, storage: optuna.storages.BaseStorage, session: Session,
               spec: GroupSpec, analysis: dict, long_study: optuna.Study, report: dict,
               build_fn, val, test, tasks) -> dict:
    """Crossover study, ensembles and soups, the test table, the final model, the report
    and the dashboard; final_results.json last."""
    root = session.path("checkpoints")
    trial = long_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))[0]
    history = history_of(trial)
    checkpoints = analysis["curves"]["checkpoints"]
    sweet = {g: v["epoch"] for g, v in analysis["sweet_spots"].items()}
    single = best_single_epoch(history, checkpoints)
    first = [sweet, {g: single for g in spec.groups}]
    distinct = len({tuple(sorted(r.items())) for r in first})
    model, _ = build_fn()
    study = optuna.create_study(study_name=f"{cfg.study}-crossover", storage=storage,
                                direction="minimize", load_if_exists=True,
                                sampler=ResumableTPESampler(cfg.train.seed))
    damaged = {int(e) for e in analysis["skipped_checkpoints"]}
    run_crossover_study(study, root, spec, sorted({*checkpoints, *damaged}), first, model, val,
                        tasks, cfg.crossover_trials + distinct, cfg.device,
                        progress=cfg.train.progress, damaged=damaged)
    optimized, best_value = best_recipe(study, damaged)
    candidates = build_candidates(root, spec, history, checkpoints, single, sweet, optimized,
                                  model, val, tasks, cfg.device)
    table = build_test_table(model, candidates, val, test, tasks, cfg.device, cfg.train.progress)
    recipe = write_final_model(session, table, candidates)
    preprocessing = session.path("preprocessing")
    results = {
        "session_id": cfg.study,
        "best_lr": report["selected_lr"],
        "sweet_spots": sweet,
        "data_stats": {"duplicates": read_json(preprocessing / "duplicate_removal_stats.json"),
                       "split": read_json(preprocessing / "split_stats.json")},
        "lr_sweep": {k: report[k] for k in ("selected_lr", "selection_score", "all_scores",
                                            "selection_reason", "excluded")},
        "training_complete": True,
        "overfitting_point": analysis["overfitting_point"],
        "crossover_recipe": recipe,
        "crossover_best_val_loss": best_value,
        "skipped_checkpoints": analysis["skipped_checkpoints"],
        "test_table": table,
    }
    results = _with_stable_timestamp(session.path("final_results.json"), results)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    search = {"n_complete": len(complete), "best_value": best_value,
              "best_params": optimized,
              "trials": [{"number": t.number, "value": t.value,
                          "queued": "fixed_params" in t.system_attrs} for t in complete]}
    write_report(session, results, analysis, history, search, tasks[0].name)
    session.write_json("final_results.json", results)
    sweep = optuna.load_study(study_name=f"{cfg.study}-lr-sweep", storage=storage)
    notes = {"long_run": without_images(sweet_spot_section(analysis)),
             "crossover": without_images([*crossover_section(search),
                                          *test_section(results, tasks[0].name)])}
    publish(session, sweep, long_study, study, notes, analysis, table)
    return results


def _with_stable_timestamp(path: Path, payload: dict) -> dict:
    """``payload`` with a timestamp: the earlier one when a rerun reproduces the same
    content, so reruns leave the file (and its dashboard artifact) byte for byte as it was."""
    payload = json_safe({k: v for k, v in payload.items() if k != "timestamp"})
    if path.exists():
        old = read_json(path)
        if "timestamp" in old and {k: v for k, v in old.items() if k != "timestamp"} == payload:
            return payload | {"timestamp": old["timestamp"]}
    return payload | {"timestamp": datetime.now(UTC).isoformat()}


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


def analyze_long_run(study: optuna.Study, spec: GroupSpec, overfit: OverfitConfig,
                     session: Session) -> dict:
    """Phase 3 over the long run's epoch reports; writes analysis/sweet_spot_analysis.json."""
    trial = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))[0]
    history = history_of(trial)
    intact, skipped = intact_checkpoints(session.path("checkpoints"), spec)
    checkpoints = [h["epoch"] for h in history if h["epoch"] in intact]
    if not checkpoints:
        raise CheckpointError(f"{session.path('checkpoints')}: no intact checkpoint to analyze "
                              f"({len(skipped)} damaged)")
    losses = dict(spec.group_losses) or {g: ("fused",) for g in spec.groups}
    analysis = find_sweet_spots(history, checkpoints, losses, spec.independent, overfit)
    analysis["skipped_checkpoints"] = {str(e): why for e, why in skipped.items()}
    session.write_json("analysis/sweet_spot_analysis.json", analysis)
    return analysis


def write_selection(study: optuna.Study, cfg: PipelineConfig, session: Session) -> dict:
    """Score the finished LRs; write the report to files, the study and a dashboard note."""
    evaluations, excluded, curves = sweep_outcome(study)
    report = select_lr(evaluations, cfg.selection_weights, cfg.selection_method, excluded)
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
    lines = [f"# LR selection\n\n**Selected LR: {report['selected_lr']:g}**. "
             f"{report['selection_reason']}.\n",
             "| LR | score | val loss | stability | efficiency | overfit |",
             "|---|---|---|---|---|---|"]
    for lr, d in sorted(report["detailed_analysis"].items(), key=lambda kv: float(kv[0])):
        lines.append(f"| {float(lr):g} | {d['total_score']:.3f} | {d['val_loss_score']:.3f} | "
                     f"{d['stability_score']:.3f} | {d['efficiency_score']:.3f} | "
                     f"{d['overfit_score']:.3f} |")
    lines += ["", *[f"- {r}" for r in report["reasons"].values()],
              *[f"- LR {lr}: not selectable ({why})" for lr, why in report["excluded"].items()]]
    save_note(study, "\n".join(lines))
    return report
