"""The training engine makes every tensor on the training device: proved on a CPU with
tests/_device_guard.py, which sends device-less factories of the project's code to the meta
device (the CUDA crash of a2b1d51 was four CPU accumulators and a CPU linspace)."""

from __future__ import annotations

import math

import pytest
import torch
from _device_guard import ROOT, StrayDeviceGuard

from model import TaskSpec, build_model
from model.data import EncodedData
from model.training import TrainConfig, build_engine, evaluate, run_epoch, steps_per_epoch

# The engine's task kinds, one each: the correct-rows count differs per kind.
TASKS = (TaskSpec("emotion", "single", 5), TaskSpec("intent", "multi", 4),
         TaskSpec("score", "regression", 1))


def _data(rows: int, length: int) -> EncodedData:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 256, (rows, length), generator=g)
    mask = torch.arange(length) < torch.randint(4, length + 1, (rows, 1), generator=g)
    return EncodedData(ids * mask, mask, {
        "emotion": torch.randint(0, 5, (rows,), generator=g),
        "intent": (torch.rand(rows, 4, generator=g) < 0.3).float(),
        "score": torch.randn(rows, 1, generator=g)})


def test_the_guard_fails_a_device_less_factory_in_project_code_as_cuda_would():
    # The accumulator pattern of a2b1d51's train_one_epoch, compiled as if it lived in model/.
    probe = ROOT / "model" / "_probe.py"
    code = compile("import torch\n"
                   "def bad(x):\n    total = torch.zeros(())\n    total += x.sum()\n"
                   "    return float(total)\n"
                   "def good(x):\n    total = torch.zeros((), device=x.device)\n"
                   "    total += x.sum()\n    return float(total)\n", str(probe), "exec")
    namespace: dict = {}
    exec(code, namespace)
    x = torch.ones(3)
    with StrayDeviceGuard() as guard:
        assert namespace["good"](x) == 3.0
        assert guard.redirected == []
        with pytest.raises(RuntimeError, match="meta"):
            namespace["bad"](x)
    assert guard.redirected == ["model/_probe.py:3 in bad"]
    # Outside the project's packages (this test file, torch itself) nothing is redirected.
    with StrayDeviceGuard() as guard:
        assert torch.zeros(()).device.type == "cpu"
    assert guard.redirected == []


@pytest.mark.parametrize(("preset", "kw"), [
    # byte transformer: R-Drop, EMA, LLRD, clipping and accumulation with a short last group
    ("tiny", dict(grad_accum=3, r_drop=1.0, ema_decay=0.9)),
    # hashed n-grams: sparse embedding tables on SparseAdam beside dense AdamW
    ("ngram-tiny", dict(grad_accum=1)),
])
def test_an_epoch_and_an_evaluation_make_no_tensor_off_the_training_device(preset, kw):
    data = _data(40, 24)
    cfg = TrainConfig(epochs=2, batch_size=8, progress=False, **kw)
    torch.manual_seed(0)
    model = build_model(preset, TASKS)
    engine = build_engine(model, model.group_spec, TASKS, cfg, steps_per_epoch(len(data), cfg))
    with StrayDeviceGuard() as guard:
        metrics = run_epoch(engine, data, data, 1)
        ema = evaluate(engine.ema.module, data, TASKS) if engine.ema is not None else None
    assert guard.redirected == []
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_loss"])
    assert math.isfinite(metrics["convergence_speed"])  # the trend line of the step losses
    assert 0.0 <= metrics["train_acc"] <= 1.0
    assert ema is None or math.isfinite(ema["loss"])
