"""Activations measured per layer at small shapes and scaled to a larger one land within
10% of a measurement at that shape, for the byte transformers and a Hugging Face model,
with and without activation checkpointing; the plan of a model without transformer stacks
gets its activation term from this profile."""

from __future__ import annotations

import pytest
import torch

from model.activations import OUTSIDE, measure_saved, profile_activations
from model.memory import TrainShape, plan_memory
from model.plugin import build
from model.tasks import EMBEDDED_TASKS

ROWS, SEQ = 4, 96  # the shape checked: 2x the rows and 3x the length of the largest profiled


def _stacked(name: str) -> bool:
    return name != OUTSIDE and name.rsplit(".", 1)[-1].isdigit()


def _check(model: torch.nn.Module, checkpointed: torch.nn.Module, seq: int = SEQ) -> None:
    profile = profile_activations(model)
    # Without checkpointing: every layer's saved tensors.
    estimate, measured = profile.estimate(ROWS, seq), measure_saved(model, ROWS, seq)
    total = sum(m.saved for m in measured.values())
    assert total > 0
    for name, m in measured.items():
        assert estimate[name] == pytest.approx(m.saved, rel=0.10, abs=1024), name
    # With checkpointing, measured on the checkpointed model: a stacked layer keeps its
    # input (its own saves are recomputed in backward), every other layer what it saves.
    estimate = profile.estimate(ROWS, seq, checkpointing=True)
    measured = measure_saved(checkpointed, ROWS, seq)
    stacked = [n for n in measured if _stacked(n)]
    assert stacked, "the model has a stack of layers to checkpoint"
    for name in stacked:
        assert estimate[name] == pytest.approx(measured[name].inputs, rel=0.10), name
    for name in measured:
        if not _stacked(name) and name != OUTSIDE:  # OUTSIDE also holds checkpoint's inputs
            assert estimate[name] == pytest.approx(measured[name].saved, rel=0.10, abs=1024), name
    assert estimate["(recompute)"] == max(profile.estimate(ROWS, seq)[n] for n in stacked)


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_scaled_activations_of_a_byte_transformer_match_a_measurement_per_layer(preset):
    model, _ = build(None, preset, EMBEDDED_TASKS, 128)
    checkpointed, _ = build(None, preset, EMBEDDED_TASKS, 128, activation_checkpointing=True)
    _check(model, checkpointed)


def test_scaled_activations_of_a_hugging_face_model_match_a_measurement_per_layer(tmp_path):
    pytest.importorskip("transformers")
    from _hf import build_model_folder

    folder = build_model_folder("bert", tmp_path / "bert")
    model, _ = build(f"hf:{folder}", "tiny", EMBEDDED_TASKS[:1], 64)
    checkpointed, _ = build(f"hf:{folder}", "tiny", EMBEDDED_TASKS[:1], 64,
                            activation_checkpointing=True)
    _check(model, checkpointed, seq=64)
    # Its plan has an activation term now (it has no nn.TransformerEncoder), R-Drop doubling it.
    shape = TrainShape(ROWS, 64, "fp32", r_drop=False)
    plain = plan_memory(model, shape)["activations"]
    profiled = plan_memory(model, shape, profile_activations(model))["activations"]
    assert plain == 0 and profiled > 0
    doubled = plan_memory(model, TrainShape(ROWS, 64, "fp32", r_drop=True),
                          profile_activations(model))["activations"]
    assert doubled == pytest.approx(2 * profiled, rel=0.01)


def test_profiling_leaves_the_global_random_state_as_it_was():
    model, _ = build(None, "ngram-tiny", EMBEDDED_TASKS, 64)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    profile_activations(model)
    assert torch.equal(torch.rand(3), expected)
