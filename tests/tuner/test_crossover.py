from __future__ import annotations

import pytest
import torch

from model import build_model
from storage.checkpoints import CheckpointError, save_checkpoint
from tuner.crossover import assemble_state, load_crossover


def _saved(tmp_path):
    """Two checkpoints of the tiny model with different weights (epochs 2 and 4)."""
    torch.manual_seed(0)
    model = build_model("tiny")
    spec = model.group_spec
    save_checkpoint(tmp_path, 2, model, spec, {})
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path, 4, model, spec, {})
    return spec, first, model.state_dict()


def test_one_epoch_for_every_group_is_exactly_that_checkpoint(tmp_path):
    spec, _, second = _saved(tmp_path)
    state = assemble_state(tmp_path, {g: 4 for g in spec.groups}, spec)
    assert all(torch.equal(state[k], second[k]) for k in second)


def test_a_mixed_recipe_takes_each_group_from_its_own_epoch(tmp_path):
    spec, first, second = _saved(tmp_path)
    recipe = {g: (2 if g == "group_b_neural" else 4) for g in spec.groups}
    torch.manual_seed(1)
    model = load_crossover(build_model("tiny"), tmp_path, recipe, spec)
    state = model.state_dict()
    for k in state:
        expected = first if k.startswith("neural.") else second
        assert torch.equal(state[k], expected[k]), k


def test_an_incomplete_recipe_and_a_damaged_file_are_refused(tmp_path):
    spec, _, _ = _saved(tmp_path)
    with pytest.raises(ValueError, match="no epoch for groups"):
        assemble_state(tmp_path, {"group_b_neural": 2}, spec)
    f = tmp_path / "epoch_002" / "group_c_dsp_kalman.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="group_c_dsp_kalman"):
        assemble_state(tmp_path, {g: 2 for g in spec.groups}, spec)
