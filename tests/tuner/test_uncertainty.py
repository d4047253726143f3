from __future__ import annotations

import numpy as np
import pytest
import torch

from model.tasks import TaskCounts, TaskSpec
from tuner.uncertainty import BootstrapConfig, accuracy, confidence, macro_f1, resample_indices, verdict


def _labels(n=400, classes=5, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def _corrupt(target, share, seed):
    """A prediction that is wrong on about ``share`` of the rows."""
    rng = np.random.default_rng(seed)
    pred = target.copy()
    wrong = rng.random(len(target)) < share
    pred[wrong] = (pred[wrong] + 1) % (target.max() + 1)
    return pred


def test_macro_f1_on_the_full_sample_equals_the_training_metric():
    target = _labels(300, 7)
    pred = _corrupt(target, 0.3, 1)
    counts = TaskCounts(TaskSpec("y", "single", 7))
    counts.update(torch.nn.functional.one_hot(torch.from_numpy(pred), 7).float(),
                  torch.from_numpy(target))
    full = np.arange(len(target))[None, :]
    assert macro_f1(pred, target, full)[0] == pytest.approx(counts.metrics()["macro_f1"])
    assert accuracy(pred, target, full)[0] == pytest.approx(counts.metrics()["accuracy"])


def test_resampling_is_seeded():
    cfg = BootstrapConfig(resamples=50, seed=4)
    assert np.array_equal(resample_indices(30, cfg), resample_indices(30, cfg))
    assert not np.array_equal(resample_indices(30, cfg), resample_indices(30, BootstrapConfig(50, 5)))


def test_intervals_hold_the_point_estimate_and_identical_models_do_not_differ():
    target = _labels()
    pred = _corrupt(target, 0.25, 2)
    out = confidence({"a": pred, "b": pred.copy()}, target, "a")
    lo, hi = out["b"]["acc"]["ci"]
    assert lo < out["b"]["acc"]["value"] < hi
    d = out["b"]["acc_vs_a"]
    assert d["diff"] == 0 and d["ci"] == [0.0, 0.0] and not d["significant"]
    assert verdict("b", out["b"], "a") == "b: no difference, the same test rows right as the a"


def test_a_clearly_better_model_is_significant_and_a_paired_interval_is_narrower():
    target = _labels(600)
    ref, better = _corrupt(target, 0.4, 3), _corrupt(target, 0.1, 4)
    out = confidence({"ref": ref, "better": better}, target, "ref")
    d = out["better"]["acc_vs_ref"]
    assert d["significant"] and d["ci"][0] > 0
    assert d["diff"] == pytest.approx(out["better"]["acc"]["value"] - out["ref"]["acc"]["value"])
    sentence = verdict("better", out["better"], "ref")
    assert sentence.startswith("better: +") and "over the ref" in sentence
    # Pairing: a model that agrees with the reference on most rows has a narrow interval.
    near = ref.copy()
    near[:30] = target[:30]
    paired = confidence({"ref": ref, "near": near}, target, "ref")["near"]["acc_vs_ref"]["ci"]
    assert paired[1] - paired[0] < d["ci"][1] - d["ci"][0]


def test_an_unknown_reference_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="reference 'x'"):
        confidence({"a": np.zeros(3, int)}, np.zeros(3, int), "x")
    with pytest.raises(ValueError, match="resamples must be >= 10, got 5"):
        BootstrapConfig(resamples=5)


def test_pooling_runs_narrows_the_interval_and_the_two_level_one_carries_their_spread():
    import numpy as np

    from tuner.uncertainty import BootstrapConfig, pooled_paired, two_level

    rng = np.random.default_rng(0)

    def run(gain: float, n: int = 900) -> np.ndarray:  # right(a) - right(b) per row
        return rng.choice([-1.0, 0.0, 1.0], size=n, p=[0.05, 0.9 - gain, 0.05 + gain])

    cfg = BootstrapConfig(resamples=500, seed=1)
    one = pooled_paired([run(0.01)], cfg)
    three = pooled_paired([run(0.01), run(0.01), run(0.01)], cfg)
    width = {k: v["ci"][1] - v["ci"][0] for k, v in (("one", one), ("three", three))}
    assert width["three"] < 0.7 * width["one"]  # about 1/sqrt(3) as wide
    assert three["rows"] == 2700 and three["runs"] == 3
    assert three["ci"][0] <= three["diff"] <= three["ci"][1]
    # Runs that disagree: rows within runs cannot see it, the two-level bootstrap does.
    apart = [run(0.06), run(-0.04), run(0.01)]
    pooled, both = pooled_paired(apart, cfg), two_level(apart, cfg)
    assert pooled["diff"] == both["diff"]
    assert both["ci"][1] - both["ci"][0] > 1.5 * (pooled["ci"][1] - pooled["ci"][0])
