from __future__ import annotations

import pytest

from tuner.monitor import Monitor
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


# --------------------------------------------------------------------------- the monitor

def _disagreeing(n=8):
    """The strategy's regime in miniature: val loss bottoms at epoch 2 and rises with
    overconfidence while val accuracy keeps improving to epoch 7."""
    val = [1.0, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2][:n]
    acc = [0.60, 0.66, 0.70, 0.72, 0.74, 0.75, 0.76, 0.755][:n]
    out = _history([1.0 - 0.1 * i for i in range(n)], val)
    for h, a in zip(out, acc, strict=True):
        h["val_acc"] = a
        h["val_task_metrics"] = {"emotion": {"accuracy": a, "macro_f1": a / 2}}
    return out


def test_the_overfitting_point_watches_the_monitors_error():
    history = _disagreeing()
    ckpts = list(range(1, 9))
    by_loss = overfitting_points(history, ckpts, monitor=Monitor("val_loss"), primary="emotion")
    by_acc = overfitting_points(history, ckpts, monitor=Monitor("val_acc"), primary="emotion")
    assert by_loss["gl"]["overfitting_point"] == 2     # GL fires at epoch 3 (0.95 > 0.9 * 1.05)
    assert by_acc["gl"]["overfitting_point"] is None   # the error only falls
    assert by_acc["gl"]["watches"] == "the error of val_acc"
    assert by_acc["gap-rise"] == by_loss["gap-rise"]    # the strategy's gap rule reads losses


def test_spliced_sweet_spots_follow_the_monitor_for_every_group():
    history = _disagreeing()
    ckpts = [2, 4, 6, 8]
    # Group g spliced into the reference: its val loss is best at 4, its accuracy at 8.
    spliced = {"g": {e: {"loss": {2: 1.0, 4: 0.9, 6: 1.0, 8: 1.1}[e],
                         "acc": {2: 0.6, 4: 0.65, 6: 0.7, 8: 0.72}[e],
                         "task_metrics": {"emotion": {}}} for e in ckpts}}
    free = OverfitConfig(gl_alpha=1000.0)  # no overfitting point: every checkpoint allowed
    by_loss = find_sweet_spots(history, ckpts, {}, (), free, Monitor("val_loss"), "emotion", spliced,
                               "splice", 6)
    by_acc = find_sweet_spots(history, ckpts, {}, (), free, Monitor("val_acc"), "emotion", spliced,
                              "splice", 6)
    assert by_loss["sweet_spots"]["g"]["epoch"] == 4 and by_acc["sweet_spots"]["g"]["epoch"] == 8
    assert by_acc["sweet_spots"]["g"]["method"] == "splice" and by_acc["monitor"] == "val_acc"
    assert by_acc["curves"]["spliced"]["g"] == {"2": 0.6, "4": 0.65, "6": 0.7, "8": 0.72}


def test_a_group_without_its_own_losses_is_spliced_even_under_module_loss():
    history = _history([1.0, 0.9, 0.8, 0.7], [1.0, 0.9, 0.85, 0.8],
                       [{"a": 1.0}, {"a": 0.5}, {"a": 0.7}, {"a": 0.9}])
    spliced = {g: {e: {"loss": 1.0 - 0.01 * e, "acc": 0.5, "task_metrics": {}} for e in (2, 4)}
               for g in ("with_loss", "without")}
    out = find_sweet_spots(history, [2, 4], {"with_loss": ("a",)}, (), OverfitConfig(),
                           Monitor(), "emotion", spliced, "module-loss", 4,
                           groups=["with_loss", "without"])
    assert out["sweet_spots"]["with_loss"] == out["sweet_spots"]["with_loss"] | {
        "method": "module-loss", "epoch": 2}
    assert out["sweet_spots"]["without"]["method"] == "splice"
    assert out["sweet_spots"]["without"]["epoch"] == 4
    with pytest.raises(ValueError, match="neither its own losses nor spliced"):
        find_sweet_spots(history, [2, 4], {}, groups=["orphan"])


def test_overfitting_before_the_first_checkpoints_still_leaves_min_candidates_of_them():
    history = _history([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], [1.0, 1.2, 1.3, 1.4, 1.5, 1.6])
    for n, point in ((1, 3), (2, 4), (3, 5)):  # GL fires at epoch 2, before any checkpoint
        points = overfitting_points(history, [3, 4, 5, 6], OverfitConfig(min_candidates=n))
        assert points["gl"]["fires_at_epoch"] == 2 and points["gl"]["overfitting_point"] == point
    # The default keeps two: a group is never left one candidate epoch.
    found = find_sweet_spots(history, [3, 4, 5, 6], {"g": ["a"]})
    assert found["overfitting_point"] == 4
    assert sorted(found["sweet_spots"]["g"]["candidates"]) == ["3", "4"]


def test_a_rise_of_fewer_val_rows_than_the_floor_never_fires_a_criterion():
    # val accuracy 0.98 -> 0.97 on 200 rows: 2 rows, a GL of 50% on the error rate.
    history = [{"epoch": e, "train_loss": 1.0 - 0.1 * e, "val_loss": 1.0, "val_acc": acc,
                "stability_score": 1.0} for e, acc in enumerate([0.98, 0.97, 0.97, 0.97], 1)]
    acc = Monitor("val_acc")
    assert overfitting_points(history, [2, 4], monitor=acc)["gl"]["fires_at_epoch"] == 2
    quiet = overfitting_points(history, [2, 4], monitor=acc, val_rows=200)
    assert quiet["gl"]["fires_at_epoch"] is None  # 2 rows < the floor of 3
    assert overfitting_points(history, [2, 4], monitor=acc, val_rows=1000)["gl"][
        "fires_at_epoch"] == 2  # the same drop is 10 rows of 1,000
    # A loss: the floor is floor_rows / rows of the value (3% of it with 100 rows).
    losses = _history([1.0, 0.9, 0.8], [1.0, 1.06, 1.07])
    assert overfitting_points(losses, [2], val_rows=1000)["gl"]["fires_at_epoch"] == 2
    assert overfitting_points(losses, [2], val_rows=100)["gl"]["fires_at_epoch"] == 2
    assert overfitting_points(losses, [2], val_rows=30)["gl"]["fires_at_epoch"] is None
