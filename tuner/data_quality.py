"""Phase 0: near-duplicate removal, a stratified length-matched split, a leakage check.

Semantics of the strategy (section 2), at the speed of ``tuner._similarity``:
walk rows in input order; a row not yet removed is kept and removes every later
row with ``fuzz.ratio(a, b) / 100 >= threshold``; a removed row removes nothing.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from rapidfuzz import fuzz

from ._similarity import similar_pairs

logger = logging.getLogger(__name__)

ConflictPolicy = Literal["keep_first", "drop_group"]
CONFLICT_POLICIES = ("keep_first", "drop_group")
_EXAMPLES = 10


def _preview(text: str) -> str:
    return text[:100]


def remove_near_duplicates(
    records: Sequence[dict],
    threshold: float = 0.92,
    text_key: str = "text",
    label_key: str | None = "label",
    conflict_policy: ConflictPolicy = "keep_first",
    progress: bool = True,
) -> tuple[list[dict], dict[str, Any]]:
    """Drop near-duplicates (the strategy's greedy walk). Returns (kept in input order, stats).

    A duplicate group is a kept row and the rows it removed. When their ``label_key``
    values disagree, ``conflict_policy`` decides: "keep_first" keeps the first row (the
    strategy's behaviour), "drop_group" drops the whole group.
    """
    if conflict_policy not in CONFLICT_POLICIES:
        raise ValueError(f"conflict_policy must be one of {CONFLICT_POLICIES}, got {conflict_policy!r}")
    texts = [r.get(text_key, "") for r in records]
    n = len(texts)
    pairs = similar_pairs(texts, None, threshold, progress=progress)   # (k, 2), i < j
    # CSR adjacency: later partners of each row, ascending (the strategy's j order).
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    firsts, partners = pairs[order, 0], pairs[order, 1]
    offsets = np.searchsorted(firsts, np.arange(n + 1))

    removed = np.zeros(n, dtype=bool)
    groups: dict[int, list[int]] = {}
    # Only rows with later partners can remove anything; visit them in input order.
    for i in np.flatnonzero(np.diff(offsets)).tolist():
        if removed[i]:
            continue
        later = partners[offsets[i]:offsets[i + 1]]
        fresh = later[~removed[later]]
        if len(fresh):
            removed[fresh] = True
            groups[i] = fresh.tolist()
    kept_idx = np.flatnonzero(~removed).tolist()

    sample_pairs = []
    for i, members in groups.items():
        for j in members:
            if len(sample_pairs) == _EXAMPLES:
                break
            sample_pairs.append({"index1": i, "index2": j,
                                 "similarity": _ratio(texts[i], texts[j]),
                                 "text1_preview": _preview(texts[i]),
                                 "text2_preview": _preview(texts[j])})
        if len(sample_pairs) == _EXAMPLES:
            break

    conflicts = []
    if label_key is not None:
        for i, members in groups.items():
            labels = [records[i].get(label_key)] + [records[j].get(label_key) for j in members]
            if any(lab != labels[0] for lab in labels[1:]):
                conflicts.append(i)
    dropped_for_conflict = set(conflicts) if conflict_policy == "drop_group" else set()
    kept = [records[i] for i in kept_idx if i not in dropped_for_conflict]

    stats = {
        "original_count": n,
        "cleaned_count": len(kept),
        "removed_count": n - len(kept),
        "removal_rate": (n - len(kept)) / n * 100 if n else 0.0,  # percent, as the strategy
        "duplicate_pairs_sample": sample_pairs,
        "threshold_used": threshold,
        "duplicate_groups": len(groups),
        "similar_pairs_found": len(pairs),
        "conflicting_label_groups": len(conflicts),
        "conflict_policy": conflict_policy,
        "conflict_rows_dropped": len(dropped_for_conflict),
        "conflict_examples": [
            {"kept_index": i, "rows": [{"index": j, "text_preview": _preview(texts[j]),
                                        "label": records[j].get(label_key)}
                                       for j in [i, *groups[i]][:5]]}
            for i in conflicts[:_EXAMPLES]],
    }
    logger.info("near-duplicates: %d -> %d rows (%.1f%% removed, %d groups, %d with conflicting "
                "labels)", n, len(kept), stats["removal_rate"], len(groups), len(conflicts))
    return kept, stats


def _ratio(a: str, b: str) -> float:
    return fuzz.ratio(a, b) / 100.0


def reference_remove_near_duplicates(
    records: Sequence[dict], threshold: float = 0.92, text_key: str = "text"
) -> list[int]:
    """The strategy's double loop, O(n^2) in Python: the yardstick for tests and bench/dedup.py.

    Returns the kept indices.
    """
    texts = [r.get(text_key, "") for r in records]
    kept, processed = [], set()
    for i, a in enumerate(texts):
        if i in processed:
            continue
        kept.append(i)
        for j in range(i + 1, len(texts)):
            if j not in processed and fuzz.ratio(a, texts[j]) / 100.0 >= threshold:
                processed.add(j)
    return kept


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: max |F_a(x) - F_b(x)|."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    xa, xb = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([xa, xb])
    fa = np.searchsorted(xa, grid, side="right") / len(xa)
    fb = np.searchsorted(xb, grid, side="right") / len(xb)
    return float(np.abs(fa - fb).max())


def _length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
    arr = np.asarray(lengths, float)
    return {"count": len(arr), "mean": float(arr.mean()), "std": float(arr.std()),
            "min": int(arr.min()), "max": int(arr.max())}


def _class_key(value: Any) -> Any:
    """Stratification key: the label itself for single-label values, else one stratum."""
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def stratified_split(
    records: Sequence[dict],
    val_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    label_key: str = "label",
    text_key: str = "text",
) -> tuple[list[dict], list[dict], list[dict], dict[str, Any]]:
    """Per class, rows sorted by text length go to val/test at even intervals.

    Each class gives max(1, int(n * ratio)) rows to val (and to test when
    test_ratio > 0), as the strategy; a class too small to leave a train row stays in
    train and is listed. Ties in length are ordered by a seeded shuffle. Splits
    keep input order. ``test_ratio=0`` is the strategy's two-way split.
    """
    if not 0.0 < val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in (0, 1), got {val_ratio!r}")
    if not 0.0 <= test_ratio < 1.0:
        raise ValueError(f"test_ratio must be in [0, 1), got {test_ratio!r}")
    if val_ratio + test_ratio >= 1.0:
        raise ValueError(f"val_ratio + test_ratio must be < 1, got {val_ratio!r} + {test_ratio!r}")
    by_class: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_class[_class_key(r.get(label_key))].append(i)
    rng = random.Random(seed)
    assign = np.zeros(len(records), dtype=np.int8)   # 0 train, 1 val, 2 test
    distribution, small = {}, []
    for key in sorted(by_class, key=lambda k: (str(type(k)), str(k))):
        rows = by_class[key]
        rng.shuffle(rows)
        rows.sort(key=lambda i: len(records[i].get(text_key, "")))   # stable: ties stay shuffled
        n = len(rows)
        n_val = max(1, int(n * val_ratio))
        n_test = max(1, int(n * test_ratio)) if test_ratio > 0 else 0
        if n - n_val - n_test < 1:
            small.append({"label": key, "count": n})
            n_val = n_test = 0
        m = n_val + n_test
        # m positions at even intervals over the length order, centred in their strata.
        picks = [int((k + 0.5) * n / m) for k in range(m)]
        for k, pos in enumerate(picks):
            is_test = (k + 1) * n_test // m > k * n_test // m
            assign[rows[pos]] = 2 if is_test else 1
        distribution[str(key)] = {"train": n - m, "val": n_val, "test": n_test, "total": n}
    train = [r for r, a in zip(records, assign, strict=True) if a == 0]
    val = [r for r, a in zip(records, assign, strict=True) if a == 1]
    test = [r for r, a in zip(records, assign, strict=True) if a == 2]
    lengths = {name: [len(r.get(text_key, "")) for r in part]
               for name, part in (("train", train), ("val", val), ("test", test))}
    stats = {
        "train_count": len(train), "val_count": len(val), "test_count": len(test),
        "val_ratio_actual": len(val) / len(records) if records else 0.0,
        "test_ratio_actual": len(test) / len(records) if records else 0.0,
        "seed": seed,
        "class_distribution": distribution,
        "classes_only_in_train": small,
        **{f"{name}_text_length_stats": _length_stats(v) for name, v in lengths.items()},
        "ks_val_vs_train": ks_statistic(lengths["val"], lengths["train"]),
        "ks_test_vs_train": ks_statistic(lengths["test"], lengths["train"]),
    }
    if small:
        logger.warning("%d class(es) have too few rows for val/test and stay in train only: %s",
                       len(small), ", ".join(f"{c['label']!r} ({c['count']} row"
                                             f"{'s' if c['count'] != 1 else ''})" for c in small[:10]))
    return train, val, test, stats


def remove_leakage(
    train: Sequence[dict],
    held_out: Sequence[dict],
    threshold: float = 0.92,
    text_key: str = "text",
    name: str = "val",
) -> tuple[list[dict], dict[str, Any]]:
    """Drop held-out rows that are exact or near duplicates of any train row."""
    train_texts = [r.get(text_key, "") for r in train]
    held_texts = [r.get(text_key, "") for r in held_out]
    pairs = similar_pairs(held_texts, train_texts, threshold, progress=False)  # (held, train)
    leaked = sorted(set(pairs[:, 0].tolist()))
    match = {}
    for h, t in pairs.tolist():
        match.setdefault(h, t)
    leaked_set = set(leaked)
    kept = [r for i, r in enumerate(held_out) if i not in leaked_set]
    exact = sum(1 for h in leaked if held_texts[h] == train_texts[match[h]])
    report = {
        "split": name, "checked": len(held_out), "removed": len(leaked), "exact": exact,
        "near": len(leaked) - exact,
        "rows": [{"index": h, "text_preview": _preview(held_texts[h]),
                  "train_index": match[h], "train_text_preview": _preview(train_texts[match[h]])}
                 for h in leaked],
    }
    if leaked:
        logger.warning("leakage: %d %s rows are near-duplicates of train rows; removed", len(leaked),
                       name)
    return kept, report
