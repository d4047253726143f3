from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import ByteTokenizer, TaskSpec, build_model
from model.tasks import consistency_loss, task_loss
from model.techniques import build_ema, llrd_param_groups, module_losses, total_loss
from model.training import TrainConfig, step_loss

ONE_TASK = (TaskSpec("y", "single", 4),)


def _batch():
    ids, mask = ByteTokenizer(64).encode_batch(["(◕‿◕)", "ಠ_ಠ", "안녕하세요", "(╯°□°）╯"])
    return ids, mask, {"y": torch.tensor([0, 1, 2, 3])}


def test_r_drop_with_dropout_zero_equals_plain_cross_entropy():
    torch.manual_seed(0)
    model = build_model("tiny", tasks=ONE_TASK, dropout=0.0)
    ids, mask, targets = _batch()
    cfg = TrainConfig(r_drop=1.0, label_smoothing=0.0, aux_weight=0.0)
    loss, _, _ = step_loss(model, ids, mask, targets, ONE_TASK, cfg)
    plain = F.cross_entropy(model(ids, mask)["fused"]["y"], targets["y"])
    torch.testing.assert_close(loss, plain, rtol=1e-6, atol=1e-6)


def test_r_drop_adds_a_positive_consistency_term_when_dropout_is_on():
    ids, mask, targets = _batch()
    torch.manual_seed(0)
    model = build_model("tiny", tasks=ONE_TASK, dropout=0.3).train()
    on = TrainConfig(r_drop=1.0, aux_weight=0.0, label_smoothing=0.0)
    torch.manual_seed(1)
    with_kl, losses, _ = step_loss(model, ids, mask, targets, ONE_TASK, on)
    assert float((with_kl - losses["fused"]).detach()) > 0.0


def test_consistency_loss_is_zero_for_identical_predictions_and_symmetric():
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    for kind, n in (("single", 7), ("multi", 7)):
        spec = TaskSpec("t", kind, n)
        assert float(consistency_loss(spec, a, a)) == pytest.approx(0.0, abs=1e-7)
        torch.testing.assert_close(consistency_loss(spec, a, b), consistency_loss(spec, b, a))


def test_label_smoothing_matches_its_closed_form():
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    eps = 0.05
    logp = F.log_softmax(logits, -1)
    expected = ((1 - eps) * -logp[torch.arange(6), y] + eps * -logp.mean(-1)).mean()
    torch.testing.assert_close(task_loss(TaskSpec("t", "single", 5), logits, y, eps), expected)


def test_module_losses_sum_each_modules_tasks_and_total_adds_aux():
    tasks = (TaskSpec("a", "single", 3), TaskSpec("b", "regression", 1))
    out = {"fused": {"a": torch.randn(2, 3), "b": torch.randn(2, 1)},
           "x": {"a": torch.randn(2, 3)}}
    targets = {"a": torch.tensor([0, 2]), "b": torch.randn(2, 1)}
    losses = module_losses(out, targets, tasks)
    expected_fused = (F.cross_entropy(out["fused"]["a"], targets["a"])
                      + F.mse_loss(out["fused"]["b"], targets["b"]))
    torch.testing.assert_close(losses["fused"], expected_fused)
    torch.testing.assert_close(total_loss(losses, 0.5), losses["fused"] + 0.5 * losses["x"])


def test_llrd_groups_carry_exactly_the_expected_lrs():
    model = build_model("tiny", device="meta")  # 2 transformer layers
    spec = model.group_spec
    groups = {g["name"]: g for g in llrd_param_groups(model, spec, 1e-3, 0.9, 0.7)}
    assert groups["layer_1"]["lr"] == pytest.approx(1e-3 * 0.9)      # top layer
    assert groups["layer_0"]["lr"] == pytest.approx(1e-3 * 0.9 ** 2)
    assert groups["below_layers"]["lr"] == pytest.approx(1e-3 * 0.9 ** 3)
    assert groups["analyzers"]["lr"] == pytest.approx(1e-3 * 0.7)
    assert groups["heads"]["lr"] == pytest.approx(1e-3)
    by_id = {id(p): name for name, p in model.named_parameters()}
    seen = [by_id[id(p)] for g in groups.values() for p in g["params"]]
    assert sorted(seen) == sorted(by_id.values())  # every parameter exactly once
    assert all(by_id[id(p)].startswith("heads.") or by_id[id(p)] == "backbone.norm.weight"
               or by_id[id(p)] == "backbone.norm.bias" for p in groups["heads"]["params"])
    assert all(by_id[id(p)].startswith("backbone.transformer_encoder.layers.1.")
               for p in groups["layer_1"]["params"])


def test_ema_after_k_steps_matches_the_closed_form():
    decay, values = 0.9, [1.0, 3.0, -2.0, 5.0, 0.5]
    model = nn.Linear(1, 1, bias=False)
    ema = build_ema(model, decay)
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update_parameters(model)
    # First update copies; then ema_k = decay * ema_{k-1} + (1 - decay) * v_k.
    k = len(values)
    expected = values[0] * decay ** (k - 1) + sum(
        (1 - decay) * decay ** (k - j) * values[j - 1] for j in range(2, k + 1))
    assert float(ema.module.weight.detach()) == pytest.approx(expected, rel=1e-6)
    assert not math.isclose(expected, values[-1])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_ema_decay_outside_the_open_unit_interval_is_rejected(decay):
    with pytest.raises(ValueError, match="EMA decay must be in"):
        build_ema(nn.Linear(1, 1), decay)
