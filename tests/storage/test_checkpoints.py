from __future__ import annotations

import pytest
import torch

from model import build_model
from model.training import EncodedData, TrainConfig, build_engine, steps_per_epoch, train_one_epoch
from storage.checkpoints import (
    CheckpointError,
    list_checkpoints,
    load_tensors,
    read_resume,
    save_checkpoint,
    save_resume,
    verify_checkpoint,
)


def _model():
    torch.manual_seed(0)
    m = build_model("tiny")
    return m, m.group_spec


def test_a_checkpoint_holds_one_file_per_group_and_reloads_exactly(tmp_path):
    model, spec = _model()
    manifest = save_checkpoint(tmp_path, 2, model, spec, {"val_loss": 1.5},
                               ema_state=model.state_dict())
    folder = tmp_path / "epoch_002"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{g}.safetensors" for g in spec.groups] + ["ema.safetensors", "manifest.json"])
    assert verify_checkpoint(folder)["epoch"] == 2 == manifest["epoch"]
    assert list_checkpoints(tmp_path) == [2]
    restored = {}
    for group in spec.groups:
        restored.update(load_tensors(folder / f"{group}.safetensors"))
    state = model.state_dict()
    assert restored.keys() == state.keys()
    assert all(torch.equal(restored[k], state[k]) for k in state)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_checkpoint_costs_at_most_1_05x_the_parameter_bytes_it_stores(tmp_path):
    model, spec = _model()
    save_checkpoint(tmp_path, 2, model, spec, {"val_loss": 1.5}, ema_state=model.state_dict())
    stored = 2 * sum(t.numel() * t.element_size() for t in model.state_dict().values())  # + EMA
    on_disk = sum(p.stat().st_size for p in (tmp_path / "epoch_002").iterdir())
    assert on_disk <= 1.05 * stored, on_disk / stored


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_group_files_are_detected(tmp_path, damage):
    model, spec = _model()
    save_checkpoint(tmp_path, 4, model, spec, {})
    f = tmp_path / "epoch_004" / "group_b_neural.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        f.unlink()
    with pytest.raises(CheckpointError, match=r"group_b_neural\.safetensors"):
        verify_checkpoint(tmp_path / "epoch_004")


def _engine(data):
    cfg = TrainConfig(epochs=2, batch_size=32, progress=False)  # every technique on
    model, spec = _model()
    return build_engine(model, spec, model.tasks, cfg, steps_per_epoch(len(data), cfg))


def test_resuming_from_the_state_equals_an_unbroken_run(tmp_path, embedded_small):
    _, data = embedded_small
    train = EncodedData(data.ids[:128], data.mask[:128], {k: v[:128] for k, v in data.targets.items()})
    unbroken = _engine(train)
    train_one_epoch(unbroken, train, 1)
    train_one_epoch(unbroken, train, 2)

    first = _engine(train)
    train_one_epoch(first, train, 1)
    tensors, plain = first.state_dict()
    save_resume(tmp_path / "resume", 1, tensors, {"engine": plain, "history": [{"epoch": 1}]})
    resumed = _engine(train)
    state = read_resume(tmp_path / "resume")
    assert state.epoch == 1 and state.meta["history"] == [{"epoch": 1}]
    resumed.load_state_dict(state.tensors, state.meta["engine"])
    train_one_epoch(resumed, train, 2)
    for a, b in ((unbroken.model, resumed.model), (unbroken.ema, resumed.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert unbroken.scheduler.state_dict() == resumed.scheduler.state_dict()


def _three_states(folder, data):
    engine = _engine(data)
    for epoch in (1, 2, 3):
        train_one_epoch(engine, data, epoch)
        tensors, plain = engine.state_dict()
        save_resume(folder, epoch, tensors,
                    {"engine": plain, "history": [{"epoch": e} for e in range(1, epoch + 1)]})
    return engine


def test_the_two_newest_resume_states_are_kept(tmp_path, embedded_small):
    _, data = embedded_small
    _three_states(tmp_path, data)
    assert sorted(p.name for p in tmp_path.glob("state_epoch_*")) == [
        "state_epoch_002.json", "state_epoch_002.safetensors",
        "state_epoch_003.json", "state_epoch_003.safetensors"]
    assert read_resume(tmp_path).epoch == 3


def _cut(f):
    f.write_bytes(f.read_bytes()[:-100])


def _flip(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda d: _cut(d / "state_epoch_003.safetensors"), "bytes, state_epoch_003.json says"),
    (lambda d: _flip(d / "state_epoch_003.safetensors"), "sha256 differs from state_epoch_003.json"),
    (lambda d: (d / "state_epoch_003.safetensors").unlink(), "resume state unreadable"),
    (lambda d: _cut(d / "state_epoch_003.json"), "resume state unreadable (JSONDecodeError)"),
])
def test_a_damaged_newest_resume_state_falls_back_to_the_one_before(tmp_path, embedded_small, caplog,
                                                                    damage, message):
    _, data = embedded_small
    _three_states(tmp_path, data)
    damage(tmp_path)
    state = read_resume(tmp_path)
    assert state.epoch == 2 and state.meta["history"] == [{"epoch": 1}, {"epoch": 2}]
    assert message in caplog.text and "newest intact state, epoch 2" in caplog.text


def test_no_intact_resume_state_is_an_error_naming_each_file(tmp_path, embedded_small):
    _, data = embedded_small
    _three_states(tmp_path, data)
    _cut(tmp_path / "state_epoch_003.safetensors")
    _flip(tmp_path / "state_epoch_002.safetensors")
    with pytest.raises(CheckpointError, match="no intact resume state") as e:
        read_resume(tmp_path)
    assert "state_epoch_003" in str(e.value) and "state_epoch_002" in str(e.value)


def test_a_bf16_checkpoint_halves_the_group_files_and_loads_back_as_float32(tmp_path):
    from model import build_model
    from storage.checkpoints import load_tensors, save_checkpoint

    model = build_model("tiny")
    spec = model.group_spec
    full = save_checkpoint(tmp_path / "a", 2, model, spec, {"epoch": 2})
    half = save_checkpoint(tmp_path / "b", 2, model, spec, {"epoch": 2}, dtype=torch.bfloat16)
    assert (full["dtype"], half["dtype"]) == ("float32", "bfloat16")
    for name, info in full["files"].items():
        assert half["files"][name]["bytes"] < 0.55 * info["bytes"], name
    group = next(iter(spec.groups))
    back = load_tensors(tmp_path / "b" / "epoch_002" / f"{group}.safetensors", upcast=True)
    state = model.state_dict()
    for key, value in back.items():
        assert value.dtype == state[key].dtype
        assert torch.allclose(value, state[key], rtol=2**-8, atol=1e-30), key
