"""Phase 3's per-group evidence from real checkpoint files: a group spliced into the
reference is exactly that reference with the group's tensors replaced, and evaluations an
interrupted phase 3 already made are not made again."""

from __future__ import annotations

import torch

from model import PRESETS, ByteTokenizer, build_model
from model.training import evaluate
from storage.checkpoints import save_checkpoint
from tuner.crossover import assemble_state
from tuner.splice import splice_evaluations


def _checkpoints(root, ds):
    torch.manual_seed(0)
    model = build_model("tiny", ds.tasks)
    for epoch in (2, 4, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_checkpoint(root, epoch, model, model.group_spec, {})
    return model, model.group_spec


def test_each_spliced_evaluation_is_the_reference_with_one_group_replaced(tmp_path, embedded_small):
    ds, _ = embedded_small
    val = ds.encode(ds.records[:120], ByteTokenizer(PRESETS["tiny"].max_length))
    model, spec = _checkpoints(tmp_path, ds)
    out = splice_evaluations(model, tmp_path, spec, 4, {"group_b_neural": [2, 4, 6]}, val, ds.tasks)
    recipe = {g: 4 for g in spec.groups} | {"group_b_neural": 2}
    model.load_state_dict(assemble_state(tmp_path, recipe, spec))
    assert out["group_b_neural"][2]["loss"] == evaluate(model, val, ds.tasks)["loss"]
    model.load_state_dict(assemble_state(tmp_path, {g: 4 for g in spec.groups}, spec))
    assert out["group_b_neural"][4]["loss"] == evaluate(model, val, ds.tasks)["loss"]
    assert out["group_b_neural"][2]["loss"] != out["group_b_neural"][6]["loss"]


def test_known_evaluations_are_kept_and_not_made_again(tmp_path, embedded_small):
    ds, _ = embedded_small
    val = ds.encode(ds.records[:60], ByteTokenizer(PRESETS["tiny"].max_length))
    model, spec = _checkpoints(tmp_path, ds)
    sentinel = {"loss": -1.0, "acc": 2.0, "task_loss": {}, "task_metrics": {}}
    out = splice_evaluations(model, tmp_path, spec, 4, {"group_b_neural": [2, 4, 6]}, val, ds.tasks,
                             known={"group_b_neural": {6: sentinel}})
    assert out["group_b_neural"][6] is sentinel
    assert out["group_b_neural"][2]["loss"] > 0
