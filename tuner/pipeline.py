"""The pipeline: data -> split -> training, each phase writing its evidence.

Phases that exist so far: data loading and a seeded stratified split, and a
training run of the engine whose per-epoch metrics go to the session folder.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from model import ByteTokenizer
from model.plugin import build
from model.training import TrainConfig, build_engine, run_epoch, steps_per_epoch
from storage import Dataset, Session, load_embedded, load_file

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
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length!r}")
        if not 0 <= self.val_ratio < 1 or self.val_ratio == 0:
            raise ValueError(f"val_ratio must be in (0, 1), got {self.val_ratio!r}")
        if not 0 <= self.test_ratio < 1:
            raise ValueError(f"test_ratio must be in [0, 1), got {self.test_ratio!r}")
        if self.val_ratio + self.test_ratio >= 1:
            raise ValueError(f"val_ratio + test_ratio must be < 1, got "
                             f"{self.val_ratio!r} + {self.test_ratio!r}")


def load_data(cfg: PipelineConfig) -> Dataset:
    if cfg.data is None:
        return load_embedded(cfg.max_samples, cfg.train.seed)
    return load_file(cfg.data, cfg.text_field, cfg.label_fields, max_samples=cfg.max_samples,
                     seed=cfg.train.seed)


def simple_split(dataset: Dataset, cfg: PipelineConfig) -> tuple[list, list, list]:
    """Seeded per-class shuffle split (train, val, test) on the first task's label.

    Multi-label or regression first tasks split without stratification.
    """
    primary = dataset.fields[0]
    by_class: dict = defaultdict(list)
    for r in dataset.records:
        by_class[r[primary.field] if primary.kind == "single" else None].append(r)
    rng = random.Random(cfg.train.seed)
    train, val, test = [], [], []
    for key in sorted(by_class, key=str):
        rows = by_class[key]
        rng.shuffle(rows)
        n_val, n_test = round(len(rows) * cfg.val_ratio), round(len(rows) * cfg.test_ratio)
        val += rows[:n_val]
        test += rows[n_val:n_val + n_test]
        train += rows[n_val + n_test:]
    if not train or not val:
        raise ValueError(f"{dataset.source}: {len(dataset.records)} rows are too few for a "
                         f"train/val split with val_ratio {cfg.val_ratio}")
    return train, val, test


def run(cfg: PipelineConfig) -> dict:
    """Run every phase that exists; returns the final summary (also written to disk)."""
    session = Session.create(cfg.backup_dir, cfg.study)
    logger.info("session folder: %s", session.root)

    # -- data
    dataset = load_data(cfg)
    train_rows, val_rows, test_rows = simple_split(dataset, cfg)
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
