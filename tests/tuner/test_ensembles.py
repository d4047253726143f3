from __future__ import annotations

import math

import pytest
import torch

from model import build_model
from model.training import evaluate
from tuner.ensembles import (
    average_states,
    combine_predictions,
    evaluate_ensemble,
    greedy_soup,
    greedy_soup_order,
    prediction_metrics,
    split_outputs,
    variant_recipes,
)


def test_variants_shift_every_group_and_clamp_to_saved_checkpoints():
    checkpoints = [2, 4, 6, 8, 10]
    variants = variant_recipes({"a": 4, "b": 10}, checkpoints)
    by_offsets = {tuple(v["offsets"]): v["recipe"] for v in variants}
    assert by_offsets == {
        (-4,): {"a": 2, "b": 6},          # a: 0 clamps to the first checkpoint
        (-2,): {"a": 2, "b": 8},
        (0,): {"a": 4, "b": 10},
        (2,): {"a": 6, "b": 10},          # b: 12 clamps to the last
        (4,): {"a": 8, "b": 10},
    }


def test_variants_that_land_on_the_same_recipe_count_once():
    variants = variant_recipes({"a": 2}, [2, 4])
    assert [v["offsets"] for v in variants] == [[-4, -2, 0], [2, 4]]
    assert [v["recipe"] for v in variants] == [{"a": 2}, {"a": 4}]
    with pytest.raises(ValueError, match="no checkpoints"):
        variant_recipes({"a": 2}, [])


def test_greedy_order_is_by_accuracy_then_loss_then_epoch():
    acc = {2: 0.5, 4: 0.7, 6: 0.7, 8: 0.6}
    loss = {2: 1.0, 4: 0.9, 6: 0.8, 8: 0.7}
    assert greedy_soup_order(acc, loss) == [6, 4, 8, 2]


def test_average_states_averages_floats_and_keeps_integer_buffers():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    avg = average_states(iter([a, b]))
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["w"].dtype == torch.float32
    assert int(avg["n"]) == 7
    with pytest.raises(ValueError, match="no states"):
        average_states([])


def test_greedy_soup_keeps_a_checkpoint_only_if_the_average_does_not_lose_accuracy():
    # Score: closeness of w to 2.0 (higher is better), standing in for val accuracy.
    states = {1: {"w": torch.tensor([2.0])}, 2: {"w": torch.tensor([2.2])},
              3: {"w": torch.tensor([9.0])}, 4: {"w": torch.tensor([1.8])}}
    loads = []

    def load(e):
        loads.append(e)
        return states[e]

    out = greedy_soup([1, 2, 3, 4], load, lambda s: -abs(float(s["w"]) - 2.0))
    # 1 alone: 2.0. +2: 2.1 (worse, dropped). +3: 5.5 (dropped). +4: 1.9 (worse, dropped).
    assert out["members"] == [1]
    assert [d["kept"] for d in out["decisions"]] == [True, False, False, False]
    out = greedy_soup([2, 4, 3], lambda e: states[e], lambda s: -abs(float(s["w"]) - 2.0))
    assert out["members"] == [2, 4]   # (2.2 + 1.8) / 2 = 2.0 beats 2.2 alone
    assert torch.allclose(out["state"]["w"], torch.tensor([2.0]))
    assert loads == [1, 2, 3, 4]      # one checkpoint loaded at a time, each once


def test_a_one_member_ensemble_matches_evaluate(embedded_small):
    ds, data = embedded_small
    torch.manual_seed(0)
    model = build_model("tiny", ds.tasks)
    reference = evaluate(model, data, ds.tasks)
    preds, targets = split_outputs(model, data)
    assert preds["emotion"].shape == (len(data), 51) and targets["intent"].shape == (len(data), 75)
    got = prediction_metrics(combine_predictions([preds], ds.tasks), targets, ds.tasks)
    assert got["acc"] == reference["acc"]
    assert math.isclose(got["loss"], reference["loss"], rel_tol=1e-4)
    assert got["task_metrics"]["emotion"]["macro_f1"] == pytest.approx(
        reference["task_metrics"]["emotion"]["macro_f1"])


def test_evaluate_keeps_the_outputs_split_outputs_computes_in_one_pass(embedded_small):
    """The test table reads each single model's test outputs from its evaluation pass: they
    are split_outputs' to the last bit, and the metrics are those of a plain evaluate."""
    ds, data = embedded_small
    torch.manual_seed(0)
    model = build_model("tiny", ds.tasks)
    kept = evaluate(model, data, ds.tasks, keep_outputs=True)
    preds, _ = split_outputs(model, data)
    assert set(kept["outputs"]) == set(preds)
    for name, pred in preds.items():
        assert torch.equal(kept["outputs"][name], pred), name
    plain = evaluate(model, data, ds.tasks)
    assert "outputs" not in plain
    assert {k: v for k, v in kept.items() if k != "outputs"} == plain


def test_an_ensemble_averages_probabilities_not_logits(embedded_small):
    ds, data = embedded_small
    torch.manual_seed(0)
    model = build_model("tiny", ds.tasks)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    second = build_model("tiny", ds.tasks).state_dict()
    out = evaluate_ensemble(model, [first, second], {"val": data}, ds.tasks)["val"]
    model.load_state_dict(first)
    p1, targets = split_outputs(model, data)
    model.load_state_dict(second)
    p2, _ = split_outputs(model, data)
    probs = (p1["emotion"].softmax(-1) + p2["emotion"].softmax(-1)) / 2
    expected_acc = float((probs.argmax(-1) == targets["emotion"]).double().mean())
    assert out["acc"] == pytest.approx(expected_acc)
    ce = float(-probs.gather(1, targets["emotion"][:, None]).log().mean())
    assert out["task_loss"]["emotion"] == pytest.approx(ce, rel=1e-5)
