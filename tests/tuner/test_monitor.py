from __future__ import annotations

import math

import pytest

from model.tasks import TaskSpec
from tuner.monitor import Monitor

TASKS = (TaskSpec("emotion", "single", 3), TaskSpec("intent", "multi", 4),
         TaskSpec("score", "regression", 1))


def _report(loss, acc, f1=0.5, mse=1.0):
    """An epoch report in the shape the long run records."""
    return {"val_loss": loss, "val_acc": acc,
            "val_task_loss": {"emotion": loss / 2, "intent": 0.1, "score": mse},
            "val_task_metrics": {"emotion": {"accuracy": acc, "macro_f1": f1},
                                 "intent": {"accuracy": 0.2, "micro_f1": f1},
                                 "score": {"mse": mse}}}


def test_the_direction_follows_the_name():
    assert Monitor("val_loss").direction == "minimize"
    assert Monitor("val_acc").direction == "maximize"
    assert Monitor("val_macro_f1").direction == "maximize"
    assert Monitor("intent:micro_f1").direction == "maximize"
    assert Monitor("score:mse").direction == "minimize"
    assert Monitor("emotion:loss").direction == "minimize"


def test_it_reads_every_metric_dict_shape_the_same():
    report = _report(1.2, 0.7, f1=0.4)
    evaluated = {"loss": 1.2, "acc": 0.7, "task_loss": report["val_task_loss"],
                 "task_metrics": report["val_task_metrics"]}
    for m in ("val_loss", "val_acc", "val_macro_f1", "intent:micro_f1", "score:mse", "emotion:loss"):
        assert Monitor(m).value(report, "emotion") == Monitor(m).value(evaluated, "emotion")
    assert Monitor("val_macro_f1").value(report, "emotion") == 0.4
    assert Monitor("emotion:loss").value(report, "emotion") == 0.6


def test_accuracy_like_monitors_watch_their_error_and_losses_themselves():
    assert Monitor("val_acc").error(_report(1.0, 0.75), "emotion") == pytest.approx(0.25)
    assert Monitor("val_loss").error(_report(1.0, 0.75), "emotion") == 1.0


def test_a_monitor_the_data_cannot_give_is_refused_naming_what_it_can():
    with pytest.raises(ValueError, match=r"score.*regression.*not accuracy"):
        Monitor("score:accuracy").check(TASKS)
    with pytest.raises(ValueError, match="no task 'sentiment'"):
        Monitor("sentiment:accuracy").check(TASKS)
    with pytest.raises(ValueError, match=r"regression.*not accuracy"):
        Monitor("val_acc").check((TaskSpec("score", "regression", 1),))
    with pytest.raises(ValueError, match=r"multi.*not macro_f1"):
        Monitor("intent:macro_f1").check(TASKS)
    for ok in ("val_loss", "val_acc", "val_macro_f1", "intent:micro_f1", "score:mse"):
        Monitor(ok).check(TASKS)


def test_bad_names_and_deltas_are_errors_that_quote_the_value():
    with pytest.raises(ValueError, match="'accuracy'"):
        Monitor("accuracy")
    with pytest.raises(ValueError, match="':mse'"):
        Monitor(":mse")
    with pytest.raises(ValueError, match=r"-0\.1"):
        Monitor("val_loss", min_delta=-0.1)


def test_ties_go_to_the_lower_val_loss_and_a_missing_value_is_worst():
    by_acc = Monitor("val_acc")
    assert by_acc.key(_report(1.1, 0.8), "emotion") < by_acc.key(_report(1.3, 0.8), "emotion")
    assert by_acc.signed(_report(1.0, math.nan), "emotion") == math.inf


def test_min_delta_keeps_the_earlier_checkpoint_unless_a_later_one_beats_it_by_more():
    items = [(2, _report(1.0, 0.700)), (4, _report(0.9, 0.705)), (6, _report(1.2, 0.730))]
    assert Monitor("val_acc").best_in_order(items, "emotion") == 6
    assert Monitor("val_acc", min_delta=0.01).best_in_order(items, "emotion") == 6
    assert Monitor("val_acc", min_delta=0.05).best_in_order(items, "emotion") == 2
    assert Monitor("val_loss").best_in_order(items, "emotion") == 4
    assert Monitor("val_loss", min_delta=0.2).best_in_order(items, "emotion") == 2


def test_settings_files_cannot_smuggle_in_odd_types_or_unknown_metrics():
    with pytest.raises(ValueError, match="must be a name"):
        Monitor(1)
    with pytest.raises(ValueError, match="'intent:mae'"):
        Monitor("intent:mae")
    for bad in (math.inf, True, "0.1"):
        with pytest.raises(ValueError, match="min_delta"):
            Monitor("val_loss", min_delta=bad)


def test_a_metric_the_dict_lacks_is_an_error_not_a_silent_nan():
    with pytest.raises(ValueError, match="task 'intent' have no mse"):
        Monitor("intent:mse").value(_report(1.0, 0.7), "emotion")


def test_a_missing_first_value_never_stays_the_best():
    items = [(2, _report(1.0, math.nan)), (4, _report(1.1, 0.6)), (6, _report(1.2, 0.7))]
    assert Monitor("val_acc").best_in_order(items, "emotion") == 6
