"""Confidence intervals for the test table: pure functions over per-row predictions.

Every candidate is scored on the same test rows, so differences between two of them are
measured by the paired bootstrap: each resample draws row indices once and scores both
models on those same rows (Efron and Tibshirani 1993; Koehn 2004 for the paired form).
Intervals are the 2.5th and 97.5th percentiles of the resampled statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BootstrapConfig:
    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 10:
            raise ValueError(f"resamples must be >= 10, got {self.resamples!r}")
        if not 0.5 < self.level < 1.0:
            raise ValueError(f"level must be in (0.5, 1), got {self.level!r}")


def resample_indices(n: int, cfg: BootstrapConfig) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement from a seeded generator."""
    if n < 1:
        raise ValueError(f"cannot resample an empty split (n={n!r})")
    return np.random.default_rng(cfg.seed).integers(0, n, size=(cfg.resamples, n))


def accuracy(pred: np.ndarray, target: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Accuracy on each resample: pred/target (N,) class ids, idx (R, N) -> (R,)."""
    return (pred[idx] == target[idx]).mean(axis=1)


def macro_f1(pred: np.ndarray, target: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Macro-F1 on each resample over the classes present in its targets or predictions
    (the rule of ``model.tasks.TaskCounts``): (R,)."""
    classes = int(max(pred.max(), target.max())) + 1
    r = idx.shape[0]
    p, t = pred[idx], target[idx]                                  # (R, N)
    offset = (np.arange(r) * classes)[:, None]                     # one bincount for all resamples
    hit = p == t

    def count(values: np.ndarray, where: np.ndarray) -> np.ndarray:
        return np.bincount((values + offset)[where], minlength=r * classes).reshape(r, classes)

    tp, fp, fn = count(t, hit), count(p, ~hit), count(t, ~hit)
    present = (tp + fp + fn) > 0
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


METRICS: dict[str, Metric] = {"acc": accuracy, "macro_f1": macro_f1}


def _interval(values: np.ndarray, level: float) -> list[float]:
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def confidence(preds: Mapping[str, np.ndarray], target: np.ndarray, reference: str,
               cfg: BootstrapConfig = BootstrapConfig()) -> dict[str, dict[str, Any]]:
    """Per candidate: each metric with its bootstrap interval, and its paired difference
    against ``reference`` with the paired-bootstrap interval (same rows for both).

    ``preds``: candidate -> (N,) predicted class ids on the test rows; ``target``: (N,).
    A difference is significant when its interval excludes 0.
    """
    if reference not in preds:
        raise ValueError(f"reference {reference!r} is not among the candidates {sorted(preds)}")
    target = np.asarray(target)
    idx = resample_indices(len(target), cfg)
    full = np.arange(len(target))[None, :]
    stats = {name: {m: fn(np.asarray(p), target, idx) for m, fn in METRICS.items()}
             for name, p in preds.items()}
    out: dict[str, dict[str, Any]] = {}
    for name, p in preds.items():
        row: dict[str, Any] = {"resamples": cfg.resamples, "level": cfg.level, "seed": cfg.seed}
        for m, fn in METRICS.items():
            point = float(fn(np.asarray(p), target, full)[0])
            ref_point = float(fn(np.asarray(preds[reference]), target, full)[0])
            diff = stats[name][m] - stats[reference][m]
            lo, hi = _interval(diff, cfg.level)
            row[m] = {"value": point, "ci": _interval(stats[name][m], cfg.level)}
            row[f"{m}_vs_{reference}"] = {"diff": point - ref_point, "ci": [lo, hi],
                                          "significant": bool(lo > 0 or hi < 0)}
        out[name] = row
    return out


def pooled_paired(diffs: Sequence[np.ndarray], cfg: BootstrapConfig = BootstrapConfig(),
                  ) -> dict[str, Any]:
    """The mean per-row difference pooled over several runs (each array: one run's per-row
    differences on its own test rows, e.g. right(a) - right(b)), with the percentile
    interval of a bootstrap that resamples rows within each run: the uncertainty of these
    runs' rows, not of the runs themselves (``two_level`` adds that)."""
    arrays = [np.asarray(d, dtype=np.float64) for d in diffs]
    if not arrays or min(len(d) for d in arrays) < 1:
        raise ValueError("pooling needs at least one run with at least one row")
    rng = np.random.default_rng(cfg.seed)
    total = sum(len(d) for d in arrays)
    sums = np.zeros(cfg.resamples)
    for d in arrays:
        sums += d[rng.integers(0, len(d), size=(cfg.resamples, len(d)))].sum(axis=1)
    point = float(np.concatenate(arrays).mean())
    return {"diff": point, "ci": _interval(sums / total, cfg.level), "rows": total,
            "runs": len(arrays), "resamples": cfg.resamples, "level": cfg.level}


def two_level(diffs: Sequence[np.ndarray], cfg: BootstrapConfig = BootstrapConfig(),
              ) -> dict[str, Any]:
    """The same pooled mean with a two-level bootstrap: each resample draws the runs with
    replacement, then rows within each drawn run (Davison and Hinkley 1997, 3.8), so the
    interval also carries how much runs (seeds: samples, splits, initialisations) differ."""
    arrays = [np.asarray(d, dtype=np.float64) for d in diffs]
    if not arrays or min(len(d) for d in arrays) < 1:
        raise ValueError("a two-level bootstrap needs at least one run with at least one row")
    rng = np.random.default_rng([cfg.seed, 2])
    means = np.empty(cfg.resamples)
    for r in range(cfg.resamples):
        picks = rng.integers(0, len(arrays), size=len(arrays))
        total = rows = 0
        for j in picks:
            d = arrays[j]
            total += d[rng.integers(0, len(d), size=len(d))].sum()
            rows += len(d)
        means[r] = total / rows
    return {"diff": float(np.concatenate(arrays).mean()), "ci": _interval(means, cfg.level),
            "rows": sum(len(d) for d in arrays), "runs": len(arrays),
            "resamples": cfg.resamples, "level": cfg.level}


def verdict(name: str, row: Mapping[str, Any], reference: str, metric: str = "acc") -> str:
    """One sentence, in points (the metric x 100): "optimized crossover: +1.2 pts [+0.3,
    +2.1] over the best single checkpoint" or "...: no significant difference (...)"."""
    d = row[f"{metric}_vs_{reference}"]
    pts = f"{100 * d['diff']:+.1f} pts [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]"
    label, ref = name.replace("_", " "), reference.replace("_", " ")
    if name == reference:
        return f"{label}: the reference"
    if d["diff"] == 0 and d["ci"] == [0.0, 0.0]:  # every resample ties: the same rows right
        return f"{label}: no difference, the same test rows right as the {ref}"
    if not d["significant"]:
        return f"{label}: no significant difference from the {ref} ({pts})"
    return f"{label}: {pts} {'over' if d['diff'] > 0 else 'under'} the {ref}"


__all__ = ["METRICS", "BootstrapConfig", "accuracy", "confidence", "macro_f1", "pooled_paired",
           "resample_indices", "two_level", "verdict"]
