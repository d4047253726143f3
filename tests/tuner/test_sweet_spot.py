from __future__ import annotations

import pytest

from tuner.sweet_spot import (
    OverfitConfig,
    find_sweet_spots,
    gap_rise_rule,
    gl_rule,
    overfitting_points,
    pq_rule,
    up_rule,
)


def _history(train, val, modules=None, stability=0.9):
    out = []
    for i, (t, v) in enumerate(zip(train, val, strict=True), start=1):
        out.append({"epoch": i, "train_loss": t, "val_loss": v, "stability_score": stability,
                    "val_module_loss": (modules[i - 1] if modules else {"a": v, "b": v})})
    return out


def test_the_gap_rise_rule_needs_three_rises_in_a_row_and_ignores_a_single_bump():
    epochs = [2, 4, 6, 8, 10, 12, 14]
    assert gap_rise_rule(epochs, [0.1, 0.2, 0.1, 0.15, 0.1, 0.12, 0.11]) is None   # bumps only
    assert gap_rise_rule(epochs, [0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == 10         # 3rd rise at 10


def test_prechelt_gl_fires_when_val_is_alpha_percent_above_its_best():
    assert gl_rule([1, 2, 3, 4], [2.0, 1.0, 1.04, 1.06], alpha=5) == 4
    assert gl_rule([1, 2, 3], [2.0, 1.0, 1.04], alpha=5) is None


def test_prechelt_pq_and_up_work_on_strips():
    epochs = list(range(1, 11))
    train = [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.5, 1.5, 1.5, 1.5]   # progress stalls in strip 2
    val = [2.0, 1.8, 1.6, 1.5, 1.4, 1.45, 1.5, 1.55, 1.6, 1.7]
    assert pq_rule(epochs, train, val, alpha=0.5, k=5) == 10
    assert up_rule(epochs, val, k=5, s=1) == 10
    assert up_rule(epochs, val, k=5, s=2) is None


def test_every_criterion_is_reported_and_the_seed_point_is_the_checkpoint_before_the_rises():
    train = [2.0 - 0.1 * i for i in range(12)]
    val = [2.0, 1.8, 1.6, 1.5, 1.45, 1.44, 1.46, 1.5, 1.56, 1.62, 1.7, 1.8]
    points = overfitting_points(_history(train, val), checkpoints=[2, 4, 6, 8, 10, 12])
    assert set(points) == {"gap-rise", "gl", "pq", "up"}
    assert points["gap-rise"]["fires_at_epoch"] == 10 and points["gap-rise"]["overfitting_point"] == 4
    assert points["gl"]["fires_at_epoch"] == 9 and points["gl"]["overfitting_point"] == 8


def test_sweet_spots_stay_before_the_overfitting_point_except_for_independent_groups():
    train = [2.0 - 0.1 * i for i in range(12)]
    val = [2.0, 1.8, 1.6, 1.5, 1.45, 1.44, 1.46, 1.5, 1.56, 1.62, 1.7, 1.8]
    # Module "late" keeps improving; "early" is best at epoch 4.
    modules = [{"early": abs(i - 4) + 1.0, "late": 10.0 - i} for i in range(1, 13)]
    report = find_sweet_spots(_history(train, val, modules), [2, 4, 6, 8, 10, 12],
                              {"g_early": ("early",), "g_late": ("late",), "adv": ("late",)},
                              independent=("adv",), cfg=OverfitConfig(decide_by="gap-rise"))
    spots = report["sweet_spots"]
    assert report["overfitting_point"] == 4
    assert spots["g_early"]["epoch"] == 4
    assert spots["g_late"]["epoch"] == 4            # capped by the overfitting point
    assert spots["adv"]["epoch"] == 12              # independent: any checkpoint
    assert "independent" in spots["adv"]["reason"]
    assert report["curves"]["checkpoints"] == [2, 4, 6, 8, 10, 12]


def test_without_overfitting_every_checkpoint_is_allowed():
    history = _history([2.0 - 0.1 * i for i in range(6)], [2.0 - 0.05 * i for i in range(6)])
    report = find_sweet_spots(history, [2, 4, 6], {"g": ("a",)})
    assert report["overfitting_point"] is None and report["sweet_spots"]["g"]["epoch"] == 6


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="decide_by"):
        OverfitConfig(decide_by="vibes")
    with pytest.raises(ValueError, match="no checkpoints"):
        find_sweet_spots([], [], {"g": ("a",)})
