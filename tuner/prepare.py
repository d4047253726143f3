"""Phase 0 for the pipeline: load the data, then dedup, split and check leakage, with the
evidence in ``<session>/preprocessing/``; a rerun on the same input and settings reuses
the stored split."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, replace

from model import ByteTokenizer
from model.hf import is_hf
from storage import Dataset, Session, load_embedded, load_file, read_json

from .config import PipelineConfig
from .data_quality import ks_statistic, remove_leakage, remove_near_duplicates, stratified_split
from .factory import make_tokenizer

logger = logging.getLogger(__name__)


def load_data(cfg: PipelineConfig) -> Dataset:
    dataset = _load(cfg)
    if is_hf(cfg.model) and len(dataset.fields) > 1:
        # A sequence-classification model has one head: one task.
        logger.warning("--model %s has one classification head: it trains the primary task %r "
                       "and ignores %s", cfg.model, dataset.fields[0].name,
                       ", ".join(repr(f.name) for f in dataset.fields[1:]))
        dataset = replace(dataset, fields=dataset.fields[:1])
    return dataset


def _load(cfg: PipelineConfig) -> Dataset:
    if cfg.data is None:
        return load_embedded(cfg.max_samples, cfg.train.seed)
    return load_file(cfg.data, cfg.text_field, cfg.label_fields, kinds=dict(cfg.task_kinds),
                     max_samples=cfg.max_samples, seed=cfg.train.seed,
                     label_separator=cfg.label_separator)


def _phase0_key(dataset: Dataset, cfg: PipelineConfig) -> str:
    """sha256 of the input rows and every setting phase 0 depends on."""
    h = hashlib.sha256()
    h.update(json.dumps(dataset.records, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    h.update(json.dumps({"threshold": cfg.dedup_threshold, "policy": cfg.conflict_policy,
                         "val": cfg.val_ratio, "test": cfg.test_ratio, "seed": cfg.train.seed,
                         "text": dataset.text_field, "label": dataset.fields[0].field,
                         "version": 1}).encode())
    if dataset.splits is not None:  # the same rows split otherwise are another input
        h.update(json.dumps({k: len(v) for k, v in dataset.splits.items()}).encode())
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
    if dataset.splits is not None:
        train, val, test, dup_stats, split_stats = _given_splits(dataset, cfg)
    else:
        kept, dup_stats = remove_near_duplicates(dataset.records, cfg.dedup_threshold, text_key,
                                                 label_key, cfg.conflict_policy,
                                                 cfg.train.progress)
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


def _given_splits(dataset: Dataset, cfg: PipelineConfig) -> tuple:
    """The user's train / validation / test files: near-duplicates removed within each,
    then (below, as for a split of our own) rows of val and test that leak from train."""
    text_key, label_key = dataset.text_field, dataset.fields[0].field
    logger.info("phase 0: using the given splits (%s); near-duplicates are removed within "
                "each and val/test rows that repeat a train row are removed",
                ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))
    kept, stats = {}, {}
    for name, rows in dataset.splits.items():
        kept[name], stats[name] = remove_near_duplicates(
            rows, cfg.dedup_threshold, text_key, label_key, cfg.conflict_policy,
            cfg.train.progress)
    dup_stats = {"given_splits": True, "per_split": stats,
                 "original_count": sum(s["original_count"] for s in stats.values()),
                 "cleaned_count": sum(s["cleaned_count"] for s in stats.values()),
                 "threshold_used": cfg.dedup_threshold}
    test = kept.get("test", [])
    lengths = {name: [len(r[text_key]) for r in part]
               for name, part in (("train", kept["train"]), ("val", kept["val"]), ("test", test))}
    split_stats = {"given_splits": {k: len(v) for k, v in dataset.splits.items()},
                   "train_count": len(kept["train"]),
                   "ks_val_vs_train": ks_statistic(lengths["val"], lengths["train"]),
                   "ks_test_vs_train": ks_statistic(lengths["test"], lengths["train"])}
    return kept["train"], kept["val"], test, dup_stats, split_stats


def log_truncation(dataset: Dataset, tokenizer) -> None:
    texts = [r[dataset.text_field] for r in dataset.records]
    if isinstance(tokenizer, ByteTokenizer):
        limit, unit = tokenizer.max_length - 1, "bytes"  # one id is the CLS token
        long = [len(t.encode("utf-8")) for t in texts]
    else:  # a model's own tokenizer: its ids, special tokens included
        limit, unit = tokenizer.max_length, "tokens"
        long = tokenizer.token_counts(texts)
    over = [n for n in long if n > limit]
    if over:
        logger.info("%d of %d texts are longer than %d %s and are truncated (longest %d %s)",
                    len(over), len(long), limit, unit, max(over), unit)




def phase0(dataset: Dataset, cfg: PipelineConfig, session: Session, max_length: int,
           evidence: dict[str, dict]) -> tuple[dict[str, list[dict]], object, dict]:
    """Phase 0: the split (``prepare_data``), the tokenizer, the encoded train and val
    splits, and the data summary; ``evidence`` (file name -> payload) is written after the
    input checks pass. Returns (splits, tokenizer, {"train": ..., "val": ...})."""
    splits = prepare_data(dataset, cfg, session)
    for name, payload in evidence.items():
        session.write_json(name, payload)
    tokenizer = make_tokenizer(cfg.model, max_length)
    encoded = {k: dataset.encode(splits[k], tokenizer) for k in ("train", "val")}
    log_truncation(dataset, tokenizer)
    session.write_json("preprocessing/data_summary.json", {
        "source": dataset.source, "rows_available": dataset.total_rows,
        "rows_sampled": len(dataset.records),
        "split": {k: len(v) for k, v in splits.items()},
        "tasks": [asdict(f) | {"classes": list(f.classes)} for f in dataset.fields],
    })
    return splits, tokenizer, encoded


__all__ = ["load_data", "log_truncation", "phase0", "prepare_data"]
