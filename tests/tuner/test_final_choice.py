"""The final choice, pure: per-row monitor values, the paired one-sided bootstrap on the
held-out rows, the nominee and the decision; and, end to end, that the held-out rows are
read by the final choice alone."""

from __future__ import annotations

import dataclasses
import traceback

import pytest
import torch
import torch.nn.functional as F

from model import TaskSpec
from model.data import EncodedData
from model.tasks import TaskCounts
from tuner.final_choice import ChoiceConfig, decide, nominee, paired_gain, row_scores
from tuner.monitor import Monitor

TASKS = (TaskSpec("emotion", "single", 4), TaskSpec("intent", "multi", 3))


def _outputs(n: int, seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    out = {"emotion": torch.randn(n, 4, generator=g), "intent": torch.randn(n, 3, generator=g)}
    target = {"emotion": torch.randint(0, 4, (n,), generator=g),
              "intent": (torch.rand(n, 3, generator=g) < 0.4).float()}
    return out, target


def test_per_row_values_average_to_the_monitor():
    out, target = _outputs(50, 0)
    loss = F.cross_entropy(out["emotion"], target["emotion"]) + \
        F.binary_cross_entropy_with_logits(out["intent"], target["intent"])
    assert row_scores(Monitor("val_loss"), out, target, TASKS).mean() == pytest.approx(float(loss))
    counts = TaskCounts(TASKS[0])
    counts.update(out["emotion"], target["emotion"])
    assert 1 - row_scores(Monitor("val_acc"), out, target, TASKS).mean() == pytest.approx(
        counts.metrics()["accuracy"])
    assert row_scores(Monitor("val_macro_f1"), out, target, TASKS) is None  # not a mean over rows


def _better_on(rows: int, n: int = 400) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """A reference right on half the rows, and a contender right on ``rows`` more."""
    target = {"emotion": torch.zeros(n, dtype=torch.long), "intent": torch.zeros(n, 3)}
    ref = torch.zeros(n, 4)
    ref[: n // 2, 0] = 5.0
    ref[n // 2:, 1] = 5.0
    cand = ref.clone()
    cand[n // 2: n // 2 + rows] = torch.tensor([5.0, 0, 0, 0])
    intent = torch.zeros(n, 3)
    return ({"emotion": ref, "intent": intent}, target), ({"emotion": cand, "intent": intent}, target)


@pytest.mark.parametrize("monitor", ["val_acc", "val_macro_f1", "val_loss"])
def test_a_gain_of_two_rows_in_400_is_noise_and_of_forty_is_not(monitor):
    m = Monitor(monitor)
    ref, small = _better_on(2)
    gain = paired_gain(m, ref, small, TASKS, ChoiceConfig(seed=1))
    assert gain["gain"] > 0 and gain["lower_bound"] <= 0 and gain["rows"] == 400
    assert not decide("greedy_soup", gain)["confirmed"]
    _, large = _better_on(40)
    gain = paired_gain(m, ref, large, TASKS, ChoiceConfig(seed=1))
    assert gain["lower_bound"] > 0
    decision = decide("greedy_soup", gain)
    assert decision["confirmed"] and decision["final"] == "greedy_soup"
    same = paired_gain(m, ref, ref, TASKS)
    assert same["gain"] == 0 and not decide("x", same)["confirmed"]


def test_the_nominee_is_the_best_combined_single_model_on_the_search_rows():
    rows = [{"candidate": "best_single_checkpoint", "single_model": True, "val_loss": 1.00},
            {"candidate": "last_epoch", "single_model": True, "val_loss": 0.90},
            {"candidate": "optimized_crossover", "single_model": True, "val_loss": 0.97},
            {"candidate": "variant_ensemble", "single_model": False, "val_loss": 0.80},
            {"candidate": "greedy_soup", "single_model": True, "val_loss": 0.95},
            {"candidate": "linear_baseline", "single_model": False, "reference": True,
             "val_loss": 0.50}]
    assert nominee(rows, Monitor("val_loss"), "emotion") == "greedy_soup"
    assert nominee(rows[:2], Monitor("val_loss"), "emotion") is None
    assert decide(None, None)["final"] == "best_single_checkpoint"


@pytest.mark.slow
def test_the_selection_rows_are_read_by_the_final_choice_alone(unbroken_smoke, tmp_path,
                                                               monkeypatch):
    """Phases 3-4 replayed with the selection rows watched: every batch read of them comes
    from the final choice, none from the analysis, the crossover study, the soups or the
    test table, and the only purpose they were opened for is the final choice."""
    from _runs import SMOKE

    import tuner.final_phase
    from run_study import parse_config
    from tuner.holdout import HeldOutRows, split_val, subset
    from tuner.replay import replay

    stacks: list[set[str]] = []

    class Watched(EncodedData):
        def batch(self, index, device):
            stacks.append({frame.name for frame in traceback.extract_stack()})
            return super().batch(index, device)

    made: list[HeldOutRows] = []

    def watched_split(val, task, seed, *args):
        split = split_val(val, task, seed, *args)
        rows = subset(val, split.selection.rows)
        held = HeldOutRows(Watched(rows.ids, rows.mask, rows.targets), split.selection.rows)
        made.append(held)
        return dataclasses.replace(split, selection=held)

    monkeypatch.setattr(tuner.final_phase, "split_val", watched_split)
    cfg = parse_config([*SMOKE, "--backup-dir", str(unbroken_smoke["backup"])])
    results = replay(cfg, tmp_path / "r")
    assert [h.reads for h in made] == [["final choice"]]
    assert stacks and all("choose_final" in s for s in stacks)
    fitting = {"analyze_long_run", "run_crossover_study", "greedy_soup", "build_candidates",
               "build_test_table", "splice_evaluations", "rescored_history", "reference_rows"}
    assert not any(s & fitting for s in stacks)
    choice = results["final_choice"]
    assert choice["val_split"]["selection_rows"] == len(made[0])
    assert choice["final"] == results["crossover_recipe"]["method"]
