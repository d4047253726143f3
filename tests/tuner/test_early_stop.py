"""The long run's stop rule, on hand-made epoch reports (no training)."""

from __future__ import annotations

import pytest

from tuner.early_stop import StopRule, group_loss, stop_decision
from tuner.monitor import Monitor

GROUPS = {"a": ("heads",), "b": ("neural", "dsp")}


def report(epoch: int, val_loss: float, acc: float = 0.5, heads: float = 1.0,
           neural: float = 1.0, dsp: float = 1.0) -> dict:
    return {"epoch": epoch, "val_loss": val_loss, "val_acc": acc,
            "val_module_loss": {"heads": heads, "neural": neural, "dsp": dsp, "fused": val_loss}}


def falling_then_flat(n: int, best: int) -> list[dict]:
    """Val loss falls until epoch ``best`` and rises after; every group the same."""
    out = []
    for e in range(1, n + 1):
        v = 1.0 - 0.05 * e if e <= best else 1.0 - 0.05 * best + 0.01 * (e - best)
        out.append(report(e, v, heads=v, neural=v, dsp=v))
    return out


def test_the_run_stops_once_the_monitor_and_every_group_stalled_for_the_patience():
    history = falling_then_flat(10, best=2)
    rule = StopRule(patience=3, min_checkpoints=4)
    # Checkpoints 2, 4, 6: two after the best, one short of the patience.
    go = stop_decision(history, [2, 4, 6], Monitor("val_loss"), "label", GROUPS, rule)
    assert not go["stop"] and "improved 2 checkpoint(s) ago (epoch 2)" in go["reason"]
    stop = stop_decision(history, [2, 4, 6, 8], Monitor("val_loss"), "label", GROUPS, rule)
    assert stop["stop"], stop["reason"]
    assert stop["monitor"] == {"name": "val_loss", "best_epoch": 2, "checkpoints_since": 3}
    assert stop["groups"]["a"] == {"best_epoch": 2, "checkpoints_since": 3}


def test_a_group_still_improving_keeps_the_run_going():
    history = falling_then_flat(10, best=2)
    for h in history:  # group b's own loss keeps falling
        h["val_module_loss"]["neural"] = 1.0 - 0.05 * h["epoch"]
    d = stop_decision(history, [2, 4, 6, 8], Monitor("val_loss"), "label", GROUPS,
                      StopRule(patience=3, min_checkpoints=4))
    assert not d["stop"]
    assert "b (best at epoch 8)" in d["reason"] and d["groups"]["b"]["checkpoints_since"] == 0


def test_too_few_checkpoints_keep_the_run_going_for_the_crossover():
    history = falling_then_flat(10, best=2)
    d = stop_decision(history, [2, 4, 6, 8], Monitor("val_loss"), "label", GROUPS,
                      StopRule(patience=3, min_checkpoints=5))
    assert not d["stop"] and "fewer than the 5" in d["reason"]


def test_patience_zero_never_stops():
    history = falling_then_flat(20, best=2)
    d = stop_decision(history, list(range(2, 21, 2)), Monitor("val_loss"), "label", GROUPS,
                      StopRule(patience=0))
    assert not d["stop"] and d["reason"] == "patience 0: the full run"


def test_min_delta_decides_what_counts_as_an_improvement():
    # Val loss creeps down by 0.001 per checkpoint: an improvement without a delta, none with.
    history = [report(e, 1.0 - 0.001 * e, heads=1.0 - 0.001 * e) for e in range(1, 11)]
    groups = {"a": ("heads",)}
    rule = StopRule(patience=2, min_checkpoints=2)
    plain = stop_decision(history, [2, 4, 6], Monitor("val_loss"), "label", groups, rule)
    assert not plain["stop"]
    delta = stop_decision(history, [2, 4, 6], Monitor("val_loss", 0.01), "label", groups, rule)
    assert delta["stop"] and delta["monitor"]["best_epoch"] == 2


def test_an_accuracy_monitor_stops_on_accuracy_not_on_loss():
    # The loss rises from epoch 2 while the accuracy keeps climbing: val_loss would stop,
    # val_acc goes on.
    history = [report(e, 1.0 + 0.1 * max(0, e - 2), acc=0.5 + 0.02 * e) for e in range(1, 11)]
    rule = StopRule(patience=2, min_checkpoints=2)
    on_loss = stop_decision(history, [2, 4, 6], Monitor("val_loss"), "label", {}, rule)
    on_acc = stop_decision(history, [2, 4, 6], Monitor("val_acc"), "label", {}, rule)
    assert on_loss["stop"] and not on_acc["stop"]


def test_a_group_creeping_down_by_less_than_one_percent_does_not_hold_the_run():
    history = falling_then_flat(12, best=2)
    for h in history:  # group b: -0.1% per epoch after epoch 2, -5% per epoch before
        e = h["epoch"]
        h["val_module_loss"]["neural"] = 1.0 - 0.05 * min(e, 2) - 0.001 * max(0, e - 2)
    d = stop_decision(history, [2, 4, 6, 8], Monitor("val_loss"), "label", GROUPS,
                      StopRule(patience=3, min_checkpoints=4))
    assert d["stop"] and d["groups"]["b"] == {"best_epoch": 2, "checkpoints_since": 3}


def test_group_loss_sums_the_groups_modules():
    assert group_loss(report(1, 0.5, neural=0.25, dsp=0.5), ("neural", "dsp")) == 0.75


@pytest.mark.parametrize("bad, message", [({"patience": -1}, "patience must be >= 0"),
                                          ({"min_checkpoints": 0}, "min_checkpoints must be >= 1")])
def test_bad_stop_settings_are_quoted(bad, message):
    with pytest.raises(ValueError, match=message):
        StopRule(**bad)
