from __future__ import annotations

import pytest
import torch

from model import build_model
from model.training import (
    TrainConfig,
    build_engine,
    evaluate,
    run_epoch,
    steps_per_epoch,
    train_one_epoch,
)


def _engine(ds, data, cfg, **model_kw):
    torch.manual_seed(cfg.seed)
    model = build_model("tiny", ds.tasks, **model_kw)
    return build_engine(model, model.group_spec, ds.tasks, cfg, steps_per_epoch(len(data), cfg))


def _split(data, n_train):
    from model.training import EncodedData

    def take(sl):
        return EncodedData(data.ids[sl], data.mask[sl], {k: v[sl] for k, v in data.targets.items()})
    return take(slice(0, n_train)), take(slice(n_train, None))


def test_two_seeded_cpu_runs_give_bitwise_identical_weights_and_metrics(embedded_small):
    ds, data = embedded_small
    train, val = _split(data, 256)
    cfg = TrainConfig(epochs=2, batch_size=32, grad_accum=2, progress=False)  # every technique on
    runs = []
    for _ in range(2):
        engine = _engine(ds, train, cfg)
        metrics = [run_epoch(engine, train, val, e) for e in (1, 2)]
        for m in metrics:
            m.pop("seconds"), m.pop("peak_memory_bytes")
        runs.append((engine.model.state_dict(), engine.ema.module.state_dict(), metrics))
    (w1, e1, m1), (w2, e2, m2) = runs
    assert m1 == m2
    for a, b in ((w1, w2), (e1, e2)):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_equals_one_big_batch(embedded_small):
    ds, data = embedded_small
    train, _ = _split(data, 128)
    finals, norms = [], []
    for bs, accum in ((32, 1), (16, 2)):
        cfg = TrainConfig.plain(epochs=1, batch_size=bs, grad_accum=accum, progress=False, lr=1e-3)
        engine = _engine(ds, train, cfg, dropout=0.0)
        metrics = train_one_epoch(engine, train, 1)
        assert metrics["optimizer_steps"] == 4
        finals.append(engine.model.state_dict())
        norms.append(metrics["grad_norm"])
    # Gradient norms are scale-sensitive (Adam's update is not): they prove the
    # accumulated gradient is the mean over the group, not the sum.
    for k in ("min", "max", "mean"):
        assert norms[0][k] == pytest.approx(norms[1][k], rel=1e-4)
    # Adam turns float-rounding noise in near-zero gradients into lr-sized steps, so
    # weights agree to a small fraction of the 4 x 1e-3 they can move.
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=0, atol=2e-4)


def test_training_lowers_the_validation_loss_on_the_real_corpus(embedded_small):
    ds, data = embedded_small
    train, val = _split(data, 480)
    cfg = TrainConfig(epochs=3, lr=2e-3, batch_size=32, progress=False)
    engine = _engine(ds, train, cfg)
    before = evaluate(engine.model, val, ds.tasks)["loss"]
    after = [run_epoch(engine, train, val, e)["val_loss"] for e in (1, 2, 3)][-1]
    assert after < before - 0.1


def test_epoch_metrics_carry_every_documented_figure(embedded_small):
    ds, data = embedded_small
    train, val = _split(data, 128)
    engine = _engine(ds, train, TrainConfig(epochs=1, batch_size=32, progress=False))
    m = run_epoch(engine, train, val, 1)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "learning_efficiency",
                "convergence_speed", "stability_score", "seconds", "peak_memory_bytes",
                "overfit_gap"):
        assert isinstance(m[key], float | int), key
    assert set(m["grad_norm"]) == {"mean", "std", "min", "max"}
    assert m["grad_norm"]["min"] <= m["grad_norm"]["mean"] <= m["grad_norm"]["max"]
    assert set(m["val_task_loss"]) == {"emotion", "intent", "subject"}
    assert set(m["val_module_loss"]) == {"fused", "heads", "neural", "dsp", "advanced_emotion",
                                         "advanced_intent", "advanced_subject"}
    assert set(m["val_task_metrics"]["emotion"]) == {"accuracy", "macro_f1"}
    assert set(m["val_task_metrics"]["intent"]) == {"accuracy", "micro_f1"}
    assert m["lr"]["heads"] > m["lr"]["layer_1"] > m["lr"]["layer_0"]
    assert 0 < m["stability_score"] <= 1
    assert m["peak_memory_bytes"] > 10_000_000  # the process' real peak RSS


def test_cosine_schedule_reaches_zero_after_the_last_step(embedded_small):
    ds, data = embedded_small
    train, _ = _split(data, 64)
    cfg = TrainConfig.plain(epochs=2, batch_size=32, progress=False)
    engine = _engine(ds, train, cfg)
    train_one_epoch(engine, train, 1)
    mid = engine.optimizer.param_groups[0]["lr"]
    train_one_epoch(engine, train, 2)
    assert mid == pytest.approx(cfg.lr * 0.5)
    assert engine.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_half_precision_on_cpu_is_a_clear_error(embedded_small):
    ds, data = embedded_small
    with pytest.raises(ValueError, match="needs a CUDA device"):
        _engine(ds, data, TrainConfig(precision="fp16"))


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("lr", float("nan")), ("epochs", 0),
                                          ("grad_accum", 0), ("label_smoothing", 1.0),
                                          ("precision", "fp8")])
def test_bad_train_config_quotes_the_value(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_shards_split_a_batch_contiguously_and_their_weighted_means_average_to_the_batch_mean():
    from model.training import _shard

    index = torch.arange(10, 15)
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])  # a per-row loss
    parts = [_shard(index, r, 2) for r in range(2)]
    assert [p.tolist() for p, _ in parts] == [[10, 11, 12], [13, 14]]
    # What DDP computes: the mean over ranks of weight x the rank's mean loss.
    ddp = sum(w * values[p - 10].mean() for p, w in parts) / 2
    assert float(ddp) == pytest.approx(float(values.mean()))
    assert _shard(index, 0, 1) == (index, 1.0)


def test_a_rank_without_rows_runs_one_row_at_weight_zero():
    from model.training import _shard

    part, weight = _shard(torch.tensor([7, 8]), 2, 3)
    assert part.tolist() == [7] and weight == 0.0


def test_the_ema_half_life_is_in_epochs_whatever_the_steps_per_epoch():
    from model.training import ema_decay_per_step

    for steps in (1, 50, 1000):
        decay = ema_decay_per_step(TrainConfig(ema_half_life=2.0), steps)
        assert decay ** (2 * steps) == pytest.approx(0.5)  # two epochs: half the weight
    assert ema_decay_per_step(TrainConfig(ema_half_life=0.0, ema_decay=0.99), 50) == 0.99
    with pytest.raises(ValueError, match="ema_half_life"):
        TrainConfig(ema_half_life=-1.0)


def test_an_ema_of_one_epoch_half_life_forgets_the_start_within_a_few_epochs(embedded_small):
    """With a fixed per-step decay of 0.999 and 4 steps an epoch, the EMA after 4 epochs
    still sits near its first copy (the weights after step 1): it has come under 40% of the
    way the weights went; with a half-life of one epoch, over 70%."""
    ds, data = embedded_small
    train, _ = _split(data, 128)
    gaps = {}
    for half_life in (0.0, 1.0):
        cfg = TrainConfig(epochs=4, batch_size=32, progress=False, ema_decay=0.999,
                          ema_half_life=half_life, lr=1e-2)
        engine = _engine(ds, train, cfg)
        start = {k: v.clone() for k, v in engine.model.state_dict().items()}
        for epoch in range(1, 5):
            train_one_epoch(engine, train, epoch)
        ema, now = engine.ema.module.state_dict(), engine.model.state_dict()
        key = next(k for k in now if k.endswith("weight") and now[k].dim() == 2)
        # How far the EMA sits from the start, as a share of how far training went.
        gaps[half_life] = float((ema[key] - start[key]).norm() / (now[key] - start[key]).norm())
    assert gaps[0.0] < 0.4 < 0.7 < gaps[1.0]  # measured: 0.23 and 0.86
