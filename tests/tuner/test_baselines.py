from __future__ import annotations

import pytest
import torch

from model import ByteTokenizer
from model.tasks import TaskSpec
from storage import load_embedded
from tuner.baselines import BaselineConfig, linear_baseline, majority_class
from tuner.ensembles import prediction_metrics


def test_linear_baseline_learns_the_real_corpus_and_reports_its_val_choice():
    ds = load_embedded(3000, seed=1)
    data = ds.encode(ds.records, ByteTokenizer(16))
    # The sample keeps the corpus order (grouped by category): interleave the splits.
    parts = {"train": [i for i in range(3000) if i % 10 < 8],
             "val": list(range(8, 3000, 10)), "test": list(range(9, 3000, 10))}
    texts = {k: [ds.records[i]["text"] for i in rows] for k, rows in parts.items()}
    targets = {k: {t: v[rows] for t, v in data.targets.items()} for k, rows in parts.items()}
    preds, how = linear_baseline(texts, targets, ds.tasks,
                                 BaselineConfig(c_grid=(1.0, 100.0), max_extensions=0))
    assert set(preds) == {"val", "test"}  # nothing predicted for train
    linear = prediction_metrics(preds["test"], targets["test"], ds.tasks)
    majority = prediction_metrics(majority_class(targets["train"], ds.tasks, 300), targets["test"],
                                  ds.tasks)
    assert linear["acc"] > majority["acc"] + 0.3, (linear["acc"], majority["acc"])
    assert linear["loss"] < majority["loss"]
    chosen = how["chosen_on_val"]["emotion"]
    assert chosen["C"] in (1.0, 100.0) and set(chosen["val_scores"]) == {"1", "100"}
    assert chosen["bracketed"] is False  # two values, no extension: the best is at an edge
    assert chosen["val_scores"][f"{chosen['C']:g}"] == max(chosen["val_scores"].values())
    for spec in ds.tasks:
        assert preds["test"][spec.name].shape == (300, spec.num_outputs)
    # Only the primary task searches C: the multi-label tasks are fitted once, at its C.
    for spec in ds.tasks[1:]:
        assert how["chosen_on_val"][spec.name]["C"] == chosen["C"]
        assert how["chosen_on_val"][spec.name]["from"] == "emotion"
        assert list(how["chosen_on_val"][spec.name]["val_scores"]) == [f"{chosen['C']:g}"]


def test_the_baseline_solver_converges_at_the_largest_c_of_its_grid():
    """The dual solver stopped at max_iter from C = 1000 (not the L2 solution); the primal's
    Newton iterations stay far below it at every C of the grid and its extensions."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    from tuner.baselines import _logistic

    ds = load_embedded(2000, seed=2)
    x = TfidfVectorizer(analyzer="char", ngram_range=(1, 4), sublinear_tf=True,
                        lowercase=False, dtype=np.float32).fit_transform(
        [r["text"] for r in ds.records])
    y = np.array([r["label"] == ds.records[0]["label"] for r in ds.records], dtype=int)
    cfg = BaselineConfig()
    for c in (10.0, 1000.0, 1e6):
        fit = _logistic(c, cfg).fit(x, y)
        assert fit.n_iter_.max() < cfg.max_iter // 10, (c, fit.n_iter_)


def test_majority_class_predicts_the_train_prior_for_every_row():
    tasks = (TaskSpec("y", "single", 3), TaskSpec("tags", "multi", 2), TaskSpec("score", "regression", 1))
    train = {"y": torch.tensor([2, 2, 1, 0, 2]),
             "tags": torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),
             "score": torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])}
    out = majority_class(train, tasks, 4)
    assert out["y"].argmax(-1).tolist() == [2, 2, 2, 2]
    assert out["y"].exp()[0].tolist() == pytest.approx([0.2, 0.2, 0.6], abs=1e-6)
    assert out["tags"].sigmoid()[0].tolist() == pytest.approx([0.8, 0.2], abs=1e-6)
    assert out["score"][:, 0].tolist() == pytest.approx([3.0] * 4)


def test_a_label_constant_in_train_and_a_regression_task_are_handled():
    texts = {"train": ["ab", "abc", "xyz", "xy", "a b", "zz"] * 3, "val": ["ab", "xy"]}
    tasks = (TaskSpec("tags", "multi", 2), TaskSpec("score", "regression", 1))
    targets = {"train": {"tags": torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]] * 6),
                         "score": torch.arange(18, dtype=torch.float32).reshape(-1, 1)},
               "val": {"tags": torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
                       "score": torch.tensor([[1.0], [2.0]])}}
    preds, how = linear_baseline(texts, targets, tasks)
    assert preds["val"]["tags"][:, 1].sigmoid().max() < 0.01  # never seen positive: stays off
    assert preds["val"]["score"].shape == (2, 1)
    assert "alpha" in how["chosen_on_val"]["score"] and how["models"]["score"] == "ridge regression"


def test_bad_baseline_settings_name_the_value():
    with pytest.raises(ValueError, match=r"c_grid must hold values > 0, got \(0.0,\)"):
        BaselineConfig(c_grid=(0.0,))


def test_a_best_c_at_an_edge_of_the_grid_extends_it_until_the_best_is_inside():
    from tuner.baselines import BaselineConfig, next_value

    cfg = BaselineConfig(max_extensions=2)
    assert next_value({10.0: 0.70, 100.0: 0.75, 1000.0: 0.78}, 0, cfg) == 10000.0  # top edge
    assert next_value({10.0: 0.80, 100.0: 0.75, 1000.0: 0.70}, 0, cfg) == 1.0      # bottom edge
    assert next_value({10.0: 0.70, 100.0: 0.79, 1000.0: 0.78}, 0, cfg) is None     # bracketed
    assert next_value({10.0: 0.70, 100.0: 0.75, 1000.0: 0.78}, 2, cfg) is None     # used up
    # A tie keeps the smaller value, as the choice does: a tie at the top is not an edge.
    assert next_value({10.0: 0.70, 100.0: 0.78, 1000.0: 0.78}, 0, cfg) is None
