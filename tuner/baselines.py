"""Reference rows of the test table: a linear baseline and the majority class.

Both are fitted on the train split and tuned on val only, like every candidate; they are
references, never candidates for the final model. The linear baseline is TF-IDF over
character n-grams with scikit-learn: logistic regression for single-label tasks,
one-vs-rest logistic regression for multi-label tasks, ridge regression for regression
tasks, with C (alpha) chosen on the val split. Predictions come back in the form the
model's outputs take (log-probabilities, label logits, values), so ``prediction_metrics``
scores them exactly like a model.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.tasks import TaskSpec

from .ensembles import prediction_metrics

logger = logging.getLogger(__name__)

_EPS = 1e-7
Predictions = dict[str, torch.Tensor]


@dataclass(frozen=True)
class BaselineConfig:
    ngram_min: int = 1
    ngram_max: int = 4
    c_grid: tuple[float, ...] = (10.0, 100.0, 1000.0)
    alpha_grid: tuple[float, ...] = (0.1, 1.0, 10.0)
    max_iter: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min!r}, "
                             f"{self.ngram_max!r}")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ValueError(f"c_grid must hold values > 0, got {self.c_grid!r}")
        if not self.alpha_grid or min(self.alpha_grid) <= 0:
            raise ValueError(f"alpha_grid must hold values > 0, got {self.alpha_grid!r}")


def majority_class(train: Mapping[str, torch.Tensor], tasks: Sequence[TaskSpec],
                   rows: int) -> Predictions:
    """The train split's prior, the same for every row: class frequencies (single-label;
    the argmax is the majority class), label frequencies (multi-label), the mean (regression)."""
    out = {}
    for spec in tasks:
        y = train[spec.name]
        if spec.kind == "single":
            prior = torch.bincount(y, minlength=spec.num_outputs).double() / len(y)
            pred = prior.clamp_min(_EPS).log()
        elif spec.kind == "multi":
            pred = y.double().mean(0).clamp(_EPS, 1 - _EPS).logit()
        else:
            pred = y.double().mean(0)
        out[spec.name] = pred.float().expand(rows, -1).clone()
    return out


# scikit-learn is imported where it is used: it costs every run_study.py start over a second,
# and only phase 4 fits the baseline.

def _logistic(c: float, cfg: BaselineConfig):
    from sklearn.linear_model import LogisticRegression

    # The dual problem: with far more n-gram features than rows (~125,000 x ~7,200 on the
    # default run) liblinear's dual coordinate descent solves the same L2 problem, to the
    # same predictions, 6x faster than the primal (bench/baselines.py).
    # random_state: the dual solver visits rows in a random order; seeded, a rerun fits the
    # same model to the last bit.
    return LogisticRegression(C=c, solver="liblinear", dual=True, max_iter=cfg.max_iter,
                              random_state=0)


def _single(x_train, y: np.ndarray, classes: int, c: float, cfg: BaselineConfig) -> _SingleLabel:
    # One-vs-rest liblinear: on 10,000 rows and ~125,000 n-grams it fits in seconds, where
    # the multinomial fits took longer (lbfgs 10x, saga with warm starts along the C path
    # about as long) and were less accurate on val (bench/baselines.py).
    from sklearn.multiclass import OneVsRestClassifier

    return _SingleLabel(OneVsRestClassifier(_logistic(c, cfg)).fit(x_train, y), classes)


def _multi(x_train, y: np.ndarray, c: float, cfg: BaselineConfig) -> _MultiLabel:
    # One binary logistic regression per label (one-vs-rest). Labels with one value in
    # train cannot be fitted: they keep their train frequency.
    fit = (y.min(0) != y.max(0)).nonzero()[0]
    prior = np.clip(y.mean(0), _EPS, 1 - _EPS)
    return _MultiLabel({int(j): _logistic(c, cfg).fit(x_train, y[:, j]) for j in fit}, prior)


def _regression(x_train, y: np.ndarray, alpha: float, cfg: BaselineConfig) -> _Regression:
    from sklearn.linear_model import Ridge

    return _Regression(Ridge(alpha=alpha).fit(x_train, y))


# The fitted models as plain classes (not closures: they pickle). Each maps TF-IDF rows to
# what the model's outputs would be.

@dataclass
class _SingleLabel:
    model: Any
    classes: int

    def __call__(self, x) -> torch.Tensor:  # (N, classes) log-probabilities
        full = np.full((x.shape[0], self.classes), _EPS)
        full[:, self.model.classes_] = np.maximum(self.model.predict_proba(x), _EPS)
        return torch.from_numpy(np.log(full / full.sum(1, keepdims=True))).float()


@dataclass
class _MultiLabel:
    models: dict[int, Any]
    prior: np.ndarray

    def __call__(self, x) -> torch.Tensor:  # (N, labels) logits
        p = np.tile(self.prior, (x.shape[0], 1))
        for j, model in self.models.items():
            p[:, j] = np.clip(model.predict_proba(x)[:, 1], _EPS, 1 - _EPS)
        return torch.from_numpy(np.log(p) - np.log1p(-p)).float()


@dataclass
class _Regression:
    model: Any

    def __call__(self, x) -> torch.Tensor:  # (N, 1) values
        return torch.from_numpy(np.asarray(self.model.predict(x)).reshape(-1, 1)).float()


@dataclass
class LinearBaseline:
    """A fitted linear baseline: the TF-IDF vectorizer and, per task, the model whose C
    (alpha) did best on val. ``predict`` scores any other split the way a model would."""

    vectorizer: Any
    predictors: dict[str, Any]
    how: dict[str, Any]

    def predict(self, texts: Sequence[str]) -> Predictions:
        x = self.vectorizer.transform(texts)
        return {name: fn(x) for name, fn in self.predictors.items()}


def fit_linear_baseline(train_texts: Sequence[str], val_texts: Sequence[str],
                        train_targets: Mapping[str, torch.Tensor],
                        val_targets: Mapping[str, torch.Tensor], tasks: Sequence[TaskSpec],
                        cfg: BaselineConfig = BaselineConfig()) -> LinearBaseline:
    """Fit on the train split and choose C / alpha per task on the val split; no other
    split is read."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(cfg.ngram_min, cfg.ngram_max),
                                 sublinear_tf=True, lowercase=False, dtype=np.float32)
    x_train = vectorizer.fit_transform(train_texts)
    x_val = vectorizer.transform(val_texts)
    predictors: dict[str, Any] = {}
    chosen: dict[str, dict[str, Any]] = {}
    for spec in tasks:
        y = train_targets[spec.name].numpy()
        grid = cfg.alpha_grid if spec.kind == "regression" else cfg.c_grid
        scores = {}
        best = None
        for value in grid:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                if spec.kind == "single":
                    fn = _single(x_train, y, spec.num_outputs, value, cfg)
                elif spec.kind == "multi":
                    fn = _multi(x_train, y, value, cfg)
                else:
                    fn = _regression(x_train, y.ravel(), value, cfg)
            m = prediction_metrics({spec.name: fn(x_val)}, {spec.name: val_targets[spec.name]},
                                   [spec])["task_metrics"][spec.name]
            # Larger is better: accuracy, micro-F1, minus the MSE; ties keep the smaller value.
            score = m.get("accuracy") if spec.kind == "single" else (
                m.get("micro_f1") if spec.kind == "multi" else -m["mse"])
            scores[value] = score
            if best is None or score > best[0]:
                best = (score, value, fn)
        _, value, predictors[spec.name] = best
        chosen[spec.name] = {"alpha" if spec.kind == "regression" else "C": value,
                             "val_scores": {f"{v:g}": s for v, s in scores.items()}}
        logger.info("linear baseline, task %s: %s %g chosen on val (%s)", spec.name,
                    "alpha" if spec.kind == "regression" else "C", value,
                    ", ".join(f"{v:g}: {s:.4f}" for v, s in scores.items()))
    how = {"features": f"TF-IDF character {cfg.ngram_min}-{cfg.ngram_max}-grams, sublinear tf",
           "vocabulary": len(vectorizer.vocabulary_),
           "models": {s.name: {"single": "one-vs-rest logistic regression",
                               "multi": "one-vs-rest logistic regression",
                               "regression": "ridge regression"}[s.kind] for s in tasks},
           "chosen_on_val": chosen}
    return LinearBaseline(vectorizer, predictors, how)


def linear_baseline(texts: Mapping[str, Sequence[str]], targets: Mapping[str, Mapping[str, torch.Tensor]],
                    tasks: Sequence[TaskSpec], cfg: BaselineConfig = BaselineConfig(),
                    ) -> tuple[dict[str, Predictions], dict[str, Any]]:
    """Fit on ``texts["train"]``, choose C / alpha per task on ``texts["val"]``, predict every
    other split of ``texts``. Returns (split -> task -> predictions, how it was made)."""
    fitted = fit_linear_baseline(texts["train"], texts["val"], targets["train"], targets["val"],
                                 tasks, cfg)
    return {k: fitted.predict(v) for k, v in texts.items() if k != "train"}, fitted.how


__all__ = ["BaselineConfig", "LinearBaseline", "fit_linear_baseline",
           "linear_baseline", "majority_class"]
