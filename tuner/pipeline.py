"""The pipeline: data -> split -> training, each phase writing its evidence.

Phases that exist so far: data loading, phase 0 (near-duplicate removal, the
stratified length-matched split, the leakage check) and a training run of the
engine whose per-epoch metrics go to the session folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from model import ByteTokenizer
from model.plugin import build
from model.training import TrainConfig, build_engine, run_epoch, steps_per_epoch
from storage import Dataset, Session, load_embedded, load_file, read_json

from .data_quality import remove_leakage, remove_near_duplicates, stratified_split

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
    max_length: int = 64
    device: str = "cpu"
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    dedup_threshold: float = 0.92
    conflict_policy: str = "keep_first"  # or "drop_group"
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length!r}")
        if not 0 < self.val_ratio < 1:
            raise ValueError(f"val_ratio must be in (0, 1), got {self.val_ratio!r}")
        if not 0 <= self.test_ratio < 1:
            raise ValueError(f"test_ratio must be in [0, 1), got {self.test_ratio!r}")
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


def run(cfg: PipelineConfig) -> dict:
    """Run every phase that exists; returns the final summary (also written to disk)."""
    session = Session.create(cfg.backup_dir, cfg.study)
    logger.info("session folder: %s", session.root)

    # -- data
    dataset = load_data(cfg)
    splits = prepare_data(dataset, cfg, session)
    train_rows, val_rows, test_rows = splits["train"], splits["val"], splits["test"]
    tokenizer = ByteTokenizer(cfg.max_length)
    train, val = dataset.encode(train_rows, tokenizer), dataset.encode(val_rows, tokenizer)
    session.write_json("preprocessing/data_summary.json", {
        "source": dataset.source, "rows_available": dataset.total_rows,
        "rows_sampled": len(dataset.records),
        "split": {"train": len(train_rows), "val": len(val_rows), "test": len(test_rows)},
        "tasks": [asdict(f) | {"classes": list(f.classes)} for f in dataset.fields],
    })

    # -- training
    torch.manual_seed(cfg.train.seed)
    model, spec = build(cfg.model, cfg.preset, dataset.tasks, cfg.max_length)
    engine = build_engine(model, spec, dataset.tasks, cfg.train,
                          steps_per_epoch(len(train), cfg.train), cfg.device)
    history = []
    bar = tqdm(range(1, cfg.train.epochs + 1), desc="training", disable=not cfg.train.progress)
    start = time.perf_counter()
    for epoch in bar:
        metrics = run_epoch(engine, train, val, epoch)
        history.append(metrics)
        session.write_json(f"checkpoints/metrics_epoch_{epoch:03d}.json", metrics)
        bar.set_postfix(val_loss=f"{metrics['val_loss']:.4f}", val_acc=f"{metrics['val_acc']:.3f}")
        logger.info("epoch %d: train_loss %.4f val_loss %.4f val_acc %.4f (%.1f s)", epoch,
                    metrics["train_loss"], metrics["val_loss"], metrics["val_acc"],
                    metrics["seconds"])
    summary = {
        "study": cfg.study,
        "data": dataset.source,
        "epochs": cfg.train.epochs,
        "final_val_loss": history[-1]["val_loss"],
        "final_val_acc": history[-1]["val_acc"],
        "seconds": time.perf_counter() - start,
        "history": history,
    }
    session.write_json("final/training_summary.json", summary)
    return summary
