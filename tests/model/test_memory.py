"""The memory plan: exact bytes for weights, gradients and optimizer state (checked against
the real tensors after a real AdamW step on CPU), and the activation estimate's rules;
activation checkpointing leaves the gradients as they were."""

from __future__ import annotations

import pytest
import torch

from model import build_model
from model.memory import (
    GIB,
    DeviceSpeed,
    Encoder,
    TrainShape,
    activation_bytes,
    encoders_of,
    estimate_step_seconds,
    fit_options,
    plan_memory,
    plan_table,
    tensor_bytes,
)
from model.optimizers import OPTIMIZERS, available, state_tensor_bytes
from model.techniques import build_ema
from model.training import EncodedData, TrainConfig, build_engine, train_one_epoch


def _data(n: int = 8, length: int = 16) -> EncodedData:
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (n, length))
    mask = torch.ones(n, length, dtype=torch.bool)
    return EncodedData(ids, mask, {"emotion": torch.randint(0, 51, (n,)),
                                   "intent": torch.zeros(n, 75), "subject": torch.zeros(n, 65)})


def test_weights_gradients_and_optimizer_state_are_the_bytes_of_the_real_tensors():
    model = build_model("small")
    planned = plan_memory(build_model("small", device="meta"), TrainShape(8, 16, "fp32"))
    cfg = TrainConfig(batch_size=8, epochs=1, progress=False, ema_decay=0.9)
    engine = build_engine(model, model.group_spec, model.tasks, cfg, 1)
    engine.spec = None
    train_one_epoch(engine, _data(), 1)  # one real AdamW step
    weights = tensor_bytes(model.state_dict().values())
    state = [t for s in engine.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    assert planned["weights"] == weights
    # The step freed its gradients (zero_grad(set_to_none=True)): make them once more.
    data = _data()
    out = model(data.ids, data.mask)
    sum(p.float().mean() for m in out.values() for p in m.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len([p for p in model.parameters() if p.requires_grad])
    assert planned["gradients"] == tensor_bytes(grads)
    assert planned["optimizer_state"] == tensor_bytes(state)
    ema = tensor_bytes(build_ema(model, 0.9).module.state_dict().values())
    assert planned["ema"] == ema


def test_activations_double_with_r_drop_and_shrink_with_checkpointing():
    enc = [Encoder(layers=24, d_model=1536, heads=16, d_ff=6144)]
    plain = activation_bytes(enc, TrainShape(4, 256, r_drop=False))
    assert activation_bytes(enc, TrainShape(4, 256, r_drop=True)) == 2 * plain
    assert activation_bytes(enc, TrainShape(4, 256, "fp32", r_drop=False)) == 2 * plain
    kept = activation_bytes(enc, TrainShape(4, 256, r_drop=False, activation_checkpointing=True))
    assert plain / 24 < kept < plain / 4
    # 16-bit, 4h MLP: Korthikanti et al.'s 34*s*b*h + 5*a*s^2*b minus the attention-dropout
    # mask (a*s^2*b), which this model does not keep.
    s, b, h, a = 256, 4, 1536, 16
    assert plain == 24 * (34 * s * b * h + 4 * a * s * s * b)


def test_the_730m_plan_is_made_on_the_meta_device_and_says_it_does_not_fit_7_gib():
    model = build_model("730m", device="meta")
    assert [e.layers for e in encoders_of(model)] == [24, 2, 2, 2]
    parts = plan_memory(model, TrainShape(4, 256, "bf16"))
    gib = {k: v / 1024**3 for k, v in parts.items()}
    assert gib["weights"] == pytest.approx(735_780_904 * 4 / 1024**3, rel=1e-3)
    assert gib["optimizer_state"] == pytest.approx(2 * gib["weights"], rel=1e-3)
    assert gib["total"] > 14
    table = plan_table(parts, 7.0)
    assert table[-1].startswith("| budget | 7.00 (does not fit")


def test_activation_checkpointing_gives_the_gradients_of_the_plain_run():
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("tiny", activation_checkpointing=checkpointing).train()
        data = _data(4, 20)
        torch.manual_seed(5)  # the same dropout masks, replayed on recompute
        out = model(data.ids, data.mask)
        sum(p.float().pow(2).mean() for m in out.values() for p in m.values()).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, recomputed = grads(False), grads(True)
    assert plain.keys() == recomputed.keys()
    for name in plain:
        assert torch.equal(plain[name], recomputed[name]), name


def test_the_730m_disk_plan_halves_checkpoints_in_bf16_and_stores_the_ema_once():
    from model.memory import disk_plan

    model = build_model("730m", device="meta")
    fp32, bf16 = disk_plan(model, 30, 4), disk_plan(model, 30, 2)
    gb = 1e9
    assert 87 < fp32["checkpoints"] / gb < 90  # the "about 88 GB"
    assert bf16["checkpoints"] == fp32["checkpoints"] // 2
    assert fp32["ema"] == fp32["checkpoints"] // 30  # once, not in each of the 30
    assert bf16["resume_states"] == fp32["resume_states"]  # resume keeps full precision


def test_an_ema_kept_on_the_cpu_is_left_out_of_the_gpu_plan_and_trains():
    model = build_model("tiny")
    cfg = TrainConfig(batch_size=8, epochs=1, progress=False, ema_decay=0.9, ema_device="cpu")
    engine = build_engine(model, model.group_spec, model.tasks, cfg, 1)
    train_one_epoch(engine, _data(), 1)
    assert {p.device.type for p in engine.ema.parameters()} == {"cpu"}
    meta = build_model("tiny", device="meta")
    on, off = (plan_memory(meta, TrainShape(8, 16, "fp32", ema_on_gpu=g)) for g in (True, False))
    assert off["ema"] == 0 and on["ema"] == tensor_bytes(meta.state_dict().values())
    with pytest.raises(ValueError, match="got 'cuda'"):
        TrainConfig(ema_device="cuda")


needs_torchao = pytest.mark.skipif(not available("adamw8bit"),
                                   reason="torchao is not installed (pip install -e '.[gpu]')")


@needs_torchao
def test_the_8bit_plan_is_the_bytes_of_torchaos_real_state_bf16_weights_and_an_fp32_ema():
    model = build_model("tiny")
    planned = plan_memory(build_model("tiny", device="meta"),
                          TrainShape(8, 16, "fp32", optimizer="adamw8bit"))
    cfg = TrainConfig(batch_size=8, epochs=1, progress=False, ema_decay=0.9,
                      optimizer="adamw8bit")
    engine = build_engine(model, model.group_spec, model.tasks, cfg, 1)
    engine.spec = None
    train_one_epoch(engine, _data(), 1)  # one real AdamW8bit step
    assert planned["weights"] == tensor_bytes(model.state_dict().values())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    quantized = [s["exp_avg"] for s in engine.optimizer.state.values()
                 if type(s["exp_avg"]).__name__ == "OptimState8bit"]
    assert quantized, "the tiny preset has tensors torchao keeps in 8 bits"
    largest = max(p.numel() for p in model.parameters())
    # The plan adds the step's fp32 temporaries of the largest tensor to the stored state.
    assert planned["optimizer_state"] - 12 * largest == state_tensor_bytes(engine.optimizer)
    assert planned["ema"] == tensor_bytes(engine.ema.module.state_dict().values())
    assert {p.dtype for p in engine.ema.parameters()} == {torch.float32}


def test_730m_fits_7_gib_only_with_a_low_bit_or_offloaded_optimizer_and_takes_the_fastest():
    model = build_model("730m", device="meta")
    shape = TrainShape(4, 256, "bf16")  # the strategy's micro-batch, R-Drop and EMA on
    budget = 7.0 * GIB
    options = fit_options(model, shape, 16, OPTIMIZERS)
    assert [o.step_seconds for o in options] == sorted(o.step_seconds for o in options)
    fitting = [o for o in options if o.total_bytes <= budget]
    assert {o.optimizer for o in fitting} == {"adamw8bit", "adamw-offload"}
    pick = fitting[0]
    assert (pick.optimizer, pick.activation_checkpointing, pick.ema_on_gpu) == (
        "adamw8bit", True, False)
    assert not pick.exact and "8-bit AdamW" in pick.describe()
    only_exact = [o for o in fit_options(model, shape, 16, ["adamw", "adamw-offload"])
                  if o.total_bytes <= budget]
    assert only_exact[0].optimizer == "adamw-offload" and only_exact[0].exact
    assert not [o for o in fit_options(model, shape, 16, ["adamw"]) if o.total_bytes <= budget]


def test_the_step_estimate_charges_recomputation_the_cpu_ema_copy_and_the_offload_traffic():
    model = build_model("small", device="meta")
    n = sum(p.numel() for p in model.parameters())
    plain = estimate_step_seconds(model, TrainShape(4, 64, r_drop=False), 2)
    assert plain["compute"] == pytest.approx(2 * 6 * n * 4 * 64 / DeviceSpeed().flops)
    ckpt = estimate_step_seconds(model, TrainShape(4, 64, r_drop=False,
                                                   activation_checkpointing=True), 2)
    assert ckpt["compute"] == pytest.approx(plain["compute"] * 8 / 6)
    cpu_ema = estimate_step_seconds(model, TrainShape(4, 64, r_drop=False, ema_on_gpu=False), 2)
    assert cpu_ema["ema_copy"] == pytest.approx(4 * n / DeviceSpeed().pcie_bytes_s)
    off = estimate_step_seconds(model, TrainShape(4, 64, r_drop=False, optimizer="adamw-offload"))
    assert off["offload"] > 0 and plain["offload"] == 0
