"""The optimizer options: torchao's 8-bit AdamW trains bf16 weights on the real corpus and
resumes bit-exactly from a real resume file (its 8-bit moments stored as named tensors, not
pickled); the offload optimizer's state layout round-trips; bad choices are clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from model import PRESETS, ByteTokenizer, build_model
from model.optimizers import available, build_optimizer, check_choice, join_state, split_state
from model.training import EncodedData, TrainConfig, build_engine, run_epoch, steps_per_epoch
from storage import load_embedded
from storage.checkpoints import read_resume, save_resume

needs_torchao = pytest.mark.skipif(not available("adamw8bit"),
                                   reason="torchao is not installed (pip install -e '.[gpu]')")


@pytest.fixture(scope="module")
def corpus():
    ds = load_embedded(300, seed=0)
    data = ds.encode(ds.records, ByteTokenizer(PRESETS["tiny"].max_length))

    def take(sl):
        return EncodedData(data.ids[sl], data.mask[sl], {k: v[sl] for k, v in data.targets.items()})
    return ds, take(slice(0, 128)), take(slice(128, None))


def _engine(ds, train, cfg):
    torch.manual_seed(cfg.seed)
    model = build_model("tiny", ds.tasks)
    return build_engine(model, model.group_spec, ds.tasks, cfg, steps_per_epoch(len(train), cfg))


@needs_torchao
def test_8bit_adamw_resumes_bit_exactly_from_a_real_resume_file(corpus, tmp_path):
    ds, train, val = corpus
    cfg = TrainConfig(epochs=2, batch_size=32, grad_accum=2, progress=False, optimizer="adamw8bit")
    unbroken = _engine(ds, train, cfg)
    for epoch in (1, 2):
        run_epoch(unbroken, train, val, epoch)

    first = _engine(ds, train, cfg)
    run_epoch(first, train, val, 1)
    tensors, plain = first.state_dict()
    save_resume(tmp_path, 1, tensors, {"engine": plain})
    state = read_resume(tmp_path)
    resumed = _engine(ds, train, cfg)
    resumed.load_state_dict(state.tensors, state.meta["engine"])
    run_epoch(resumed, train, val, 2)

    assert {p.dtype for p in resumed.model.parameters()} == {torch.bfloat16}
    for a, b in ((unbroken.model, resumed.model), (unbroken.ema, resumed.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # The moments came back as torchao's 8-bit tensors, code for code.
    eight = [(pid, s) for pid, s in resumed.optimizer.state_dict()["state"].items()
             if type(s["exp_avg"]).__name__ == "OptimState8bit"]
    assert eight
    ref = unbroken.optimizer.state_dict()["state"]
    for pid, s in eight:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s[name].codes, ref[pid][name].codes)
            assert torch.equal(s[name].scale, ref[pid][name].scale)
    assert any(k.endswith(".codes") for k in state.tensors)
    json.dumps(plain)  # the plain half is JSON: nothing to unpickle


@needs_torchao
def test_8bit_adamw_learns_on_the_real_corpus_like_adamw(corpus):
    ds, train, val = corpus
    losses = {}
    for name in ("adamw", "adamw8bit"):
        cfg = TrainConfig(epochs=3, batch_size=32, progress=False, optimizer=name, lr=1e-3)
        engine = _engine(ds, train, cfg)
        losses[name] = [run_epoch(engine, train, val, e)["val_loss"] for e in (1, 2, 3)]
    assert losses["adamw8bit"][-1] < losses["adamw8bit"][0]
    assert losses["adamw8bit"][-1] == pytest.approx(losses["adamw"][-1], rel=0.05)


def test_the_offload_optimizers_state_layout_round_trips_through_named_tensors():
    # CPUOffloadOptimizer.state_dict() is {"offloaded": [one AdamW state per tensor],
    # "on-device": the small tensors' AdamW}; built here from real AdamW states.
    torch.manual_seed(0)
    big = [torch.nn.Parameter(torch.randn(64, 64)) for _ in range(2)]
    small = [torch.nn.Parameter(torch.randn(8))]
    opts = [torch.optim.AdamW([{"params": [p], "lr": 1e-3, "name": "g"}]) for p in big]
    dev = torch.optim.AdamW([{"params": small, "lr": 1e-3, "name": "g"}])
    for o, ps in ((opts[0], big[:1]), (opts[1], big[1:]), (dev, small)):
        sum(p.sum() for p in ps).backward()
        o.step()
    layout = {"offloaded": [o.state_dict() for o in opts], "on-device": dev.state_dict()}
    tensors, plain = split_state(layout)
    back = join_state(json.loads(json.dumps(plain)), tensors)
    assert len(back["offloaded"]) == 2 and "on-device" in back
    for got, want in zip([*back["offloaded"], back["on-device"]],
                         [*layout["offloaded"], layout["on-device"]], strict=True):
        assert got["param_groups"] == json.loads(json.dumps(want["param_groups"]))
        for pid, s in want["state"].items():
            assert all(torch.equal(got["state"][pid][k], v) for k, v in s.items())


def test_fp16_autocast_with_bf16_weights_or_the_offload_or_an_unknown_name_is_refused():
    with pytest.raises(ValueError, match="bf16 weights, which fp16"):
        TrainConfig(optimizer="adamw8bit", precision="fp16")
    with pytest.raises(ValueError, match="before fp16's GradScaler"):
        TrainConfig(optimizer="adamw-offload", precision="fp16")
    with pytest.raises(ValueError, match="'adam9'"):
        TrainConfig(optimizer="adam9")


@needs_torchao
def test_the_offload_optimizer_on_a_cpu_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(4096))
    with pytest.raises(ValueError, match="'adamw-offload' needs a CUDA device, got 'cpu'"):
        build_optimizer("adamw-offload", [{"params": [p]}], 1e-3, 0.0, torch.device("cpu"))


@needs_torchao
def test_8bit_rounding_draws_do_not_depend_on_the_rank_so_replicas_stay_equal(corpus):
    # Nothing else random differs (no dropout, no R-Drop): two replicas that see the same
    # averaged gradient must round it the same way, as DDP assumes.
    ds, train, val = corpus
    cfg = TrainConfig(epochs=2, batch_size=32, progress=False, optimizer="adamw8bit",
                      r_drop=0.0)
    weights = []
    for rank in (0, 1):
        torch.manual_seed(0)
        model = build_model("tiny", ds.tasks, dropout=0.0)
        engine = build_engine(model, model.group_spec, ds.tasks, cfg,
                              steps_per_epoch(len(train), cfg))
        engine.rank = rank  # world stays 1: each "replica" trains on the whole batch
        for epoch in (1, 2):
            run_epoch(engine, train, val, epoch)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("name, device, precision, world, message", [
    ("adamw-offload", "cpu", "fp32", 1, "needs a CUDA device"),
    ("adamw-offload", "cuda", "fp16", 1, "cannot train with fp16"),
    ("adamw8bit", "cuda", "fp16", 1, "cannot train with fp16"),
    ("adamw-offload", "cuda", "bf16", 2, "single-process"),
])
@needs_torchao
def test_an_optimizer_the_run_cannot_use_is_refused_before_anything_runs(
        name, device, precision, world, message):
    with pytest.raises(ValueError, match=message):
        check_choice(name, device, precision, world)
    check_choice("adamw", device, precision, world)  # plain AdamW goes everywhere
