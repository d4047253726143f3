"""Which setting differences refuse a resume: pure comparisons of recorded fingerprints."""

from __future__ import annotations

from model.training import TrainConfig
from tuner.config import PipelineConfig
from tuner.settings import MAY_CHANGE, fingerprint, settings_diff


def test_a_changed_setting_is_a_difference_named_with_both_values():
    assert settings_diff({"long_run.epochs": 4}, {"long_run.epochs": 6}) == [
        "  long_run.epochs: 4 -> 6"]


def test_a_setting_added_since_the_old_run_left_at_none_is_no_difference():
    old = fingerprint(PipelineConfig())
    old.pop("dropout")  # recorded by a version without --dropout
    assert settings_diff(old, fingerprint(PipelineConfig())) == []
    assert settings_diff(old, fingerprint(PipelineConfig(dropout=0.0))) == [
        "  dropout: '<unset>' -> 0.0"]


def test_a_retired_setting_is_no_difference():
    new = fingerprint(PipelineConfig())
    assert settings_diff({**new, "stale_after_s": 3600.0}, new) == []


def test_heartbeats_and_waiting_may_change_between_runs():
    a = fingerprint(PipelineConfig(heartbeat_interval=60, wait=True))
    b = fingerprint(PipelineConfig(heartbeat_interval=5, grace_period=20, wait=False))
    assert settings_diff(a, b) == []
    assert {"heartbeat_interval", "grace_period", "wait"} <= set(MAY_CHANGE)


def test_a_session_recorded_before_the_optimizer_setting_resumes_with_adamw_only():
    new = fingerprint(PipelineConfig(train=TrainConfig(optimizer="adamw")))
    old = {k: v for k, v in new.items() if k != "train.optimizer"}  # AdamW was all there was
    assert settings_diff(old, new) == []
    eight = fingerprint(PipelineConfig(train=TrainConfig(optimizer="adamw8bit")))
    assert settings_diff(old, eight) == ["  train.optimizer: '<unset>' -> 'adamw8bit'"]
