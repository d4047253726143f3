"""Damaged files: each kind is detected by size and sha256, named in the log, and handled;
nothing damaged is ever loaded into a model."""

from __future__ import annotations

import json
import logging

import optuna
import pytest
import torch
from _runs import STUDY, crash_at, finish
from optuna.trial import TrialState

from model import build_model
from storage.checkpoints import save_checkpoint
from tuner.analysis import intact_checkpoints
from tuner.crossover import params_recipe, recipe_epochs


def _flip(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def _edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _wrong_sha(m):
    m["files"]["group_b_neural.safetensors"]["sha256"] = "0" * 64


def _wrong_epoch(m):
    m["epoch"] = 8


DAMAGE = {
    2: ("truncated", lambda d: (d / "group_a_backbone_heads.safetensors").write_bytes(
        (d / "group_a_backbone_heads.safetensors").read_bytes()[:-64]), "bytes, the manifest says"),
    4: ("byte flipped", lambda d: _flip(d / "group_c_dsp_kalman.safetensors"),
        "group_c_dsp_kalman.safetensors: sha256 differs from the manifest"),
    6: ("group file missing", lambda d: (d / "advanced_emotion.safetensors").unlink(),
        "advanced_emotion.safetensors: missing (listed in the manifest)"),
    8: ("manifest sha256 disagrees", lambda d: _edit_manifest(d, _wrong_sha),
        "group_b_neural.safetensors: sha256 differs from the manifest"),
    10: ("manifest epoch disagrees", lambda d: _edit_manifest(d, _wrong_epoch),
         "the manifest says epoch 8"),
    12: ("manifest cut short", lambda d: (d / "manifest.json").write_text('{"epoch": 12, "fi'),
         "unreadable manifest (JSONDecodeError)"),
}


def test_each_kind_of_checkpoint_damage_is_detected_named_and_skipped(tmp_path, caplog):
    torch.manual_seed(0)
    model = build_model("tiny")
    spec = model.group_spec
    for epoch in (*DAMAGE, 14):
        save_checkpoint(tmp_path, epoch, model, spec, {})
    for epoch, (_, damage, _) in DAMAGE.items():
        damage(tmp_path / f"epoch_{epoch:03d}")
    with caplog.at_level(logging.WARNING):
        intact, skipped = intact_checkpoints(tmp_path, spec)
    assert intact == [14]
    assert set(skipped) == set(DAMAGE)
    for epoch, (kind, _, message) in DAMAGE.items():
        assert message in skipped[epoch], (kind, skipped[epoch])
        assert f"checkpoint epoch {epoch} is damaged and skipped" in caplog.text


@pytest.mark.slow
def test_a_damaged_resume_state_and_checkpoint_mid_run(tmp_path, unbroken_smoke):
    """Phase 2 resumes from the state before a damaged one and reports what an unbroken run
    reports; phases 3 and 4 skip a checkpoint damaged after it was written, say so, and
    never load it."""
    backup = tmp_path / "damaged"
    crash_at(backup, "long:epoch=4#1")               # states after epochs 2 and 3 on disk
    resume = backup / STUDY / "checkpoints" / "resume"
    state = resume / "state_epoch_003.safetensors"
    state.write_bytes(state.read_bytes()[:-100])      # the newest state cut short
    crash_at(backup, "phase:3#1")                     # long run done, phase 3 not started
    _flip(backup / STUDY / "checkpoints" / "epoch_002" / "group_b_neural.safetensors")
    out = finish(backup)

    storage = f"sqlite:///{backup}/{STUDY}.db"
    long_run = optuna.load_study(study_name=f"{STUDY}-long-run", storage=storage).best_trial
    assert (long_run.value, long_run.intermediate_values) == unbroken_smoke["outcome"]["long_run"]
    assert "epoch_002/group_b_neural.safetensors: sha256 differs from the manifest" in out.stderr
    session = backup / STUDY
    analysis = json.loads((session / "analysis" / "sweet_spot_analysis.json").read_text())
    assert list(analysis["skipped_checkpoints"]) == ["2"]
    assert analysis["curves"]["checkpoints"] == [4]
    assert "checkpoint epoch 2 skipped" in (session / "final" / "report.md").read_text()
    crossover = optuna.load_study(study_name=f"{STUDY}-crossover", storage=storage)
    for t in crossover.trials:
        assert t.state != TrialState.COMPLETE or 2 not in recipe_epochs(params_recipe(t.params, [2, 4]))
    results = json.loads((session / "final_results.json").read_text())
    assert results["skipped_checkpoints"] == analysis["skipped_checkpoints"]
    for row in results["test_table"]:
        assert 2 not in recipe_epochs(row.get("recipe") or {})
