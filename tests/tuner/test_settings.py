"""Which setting differences refuse a resume (pure comparisons of recorded fingerprints),
and how a study records its settings."""

from __future__ import annotations

import optuna
import pytest

from model.training import TrainConfig
from tuner.config import PipelineConfig
from tuner.settings import (
    FORMAT_VERSION,
    MAY_CHANGE,
    SettingsChanged,
    as_recorded,
    check_study_settings,
    fingerprint,
    record_study_settings,
    settings_diff,
    study_settings,
)


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


def test_a_session_recorded_before_the_ema_half_life_resumes_with_its_per_step_decay(tmp_path):
    import json

    cfg = PipelineConfig(backup_dir=str(tmp_path), study="s")
    assert as_recorded(cfg) is cfg or as_recorded(cfg) == cfg  # no session yet: as asked
    old = {k: v for k, v in fingerprint(cfg).items() if k != "train.ema_half_life"}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "settings.json").write_text(json.dumps({"settings": old}))
    resumed = as_recorded(cfg)
    assert resumed.train.ema_half_life == 0.0 and cfg.train.ema_half_life == 1.0
    assert settings_diff(old, fingerprint(resumed)) == []
    # A half-life asked for on the command line is compared, and refused, as any setting.
    asked = PipelineConfig(backup_dir=str(tmp_path), study="s", train=TrainConfig(ema_half_life=2.0))
    assert as_recorded(asked).train.ema_half_life == 2.0
    assert settings_diff(old, fingerprint(as_recorded(asked))) == [
        "  train.ema_half_life: '<unset>' -> 2.0"]
    # The phase-3 guards added with it are recomputed on resume: no difference either.
    assert settings_diff({k: v for k, v in old.items() if not k.startswith("overfit.floor")},
                         fingerprint(resumed)) == []


def test_a_study_records_its_settings_one_short_attr_per_group_and_reads_them_back(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    settings = {"format_version": FORMAT_VERSION, "settings": fingerprint(PipelineConfig())}
    study = optuna.create_study(study_name="s", storage=storage)
    record_study_settings(study, settings)
    again = optuna.load_study(study_name="s", storage=storage)
    groups = {k: v for k, v in again.user_attrs.items() if k.startswith("settings.")}
    assert {"settings.data", "settings.model", "settings.train", "settings.sweep",
            "settings.long_run", "settings.format_version"} <= set(groups)
    assert max(len(v) for v in groups.values() if isinstance(v, dict)) <= 20  # readable
    assert study_settings(again) == settings
    check_study_settings(again, settings)  # the same settings: no error
    other = {**settings, "settings": fingerprint(PipelineConfig(preset="tiny"))}
    with pytest.raises(SettingsChanged, match="preset: 'ngram' -> 'tiny'"):
        check_study_settings(again, other)


def test_a_study_recorded_in_one_settings_attr_by_an_older_version_is_still_read(tmp_path):
    old = {"format_version": FORMAT_VERSION, "settings": {"preset": "ngram"}}
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    study.set_user_attr("settings", old)
    assert study_settings(study) == old


def test_a_record_half_written_by_another_worker_reads_as_no_record_yet(tmp_path):
    # Groups are written first and the format version last: a worker reading between two
    # writes must not take a part of the settings for all of them.
    settings = {"format_version": FORMAT_VERSION, "settings": fingerprint(PipelineConfig())}
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    study.set_user_attr("settings.data", {"data": None})
    assert study_settings(study) is None
    check_study_settings(study, settings)  # records the whole of it
    assert study_settings(study) == settings


def test_the_format_version_is_recorded_after_every_group(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    written = []

    class Recorded:  # the real study, with the order of its writes kept
        user_attrs = property(lambda self: study.user_attrs)

        def set_user_attr(self, key, value):
            written.append(key)
            study.set_user_attr(key, value)

    record_study_settings(Recorded(), {"format_version": FORMAT_VERSION,
                                       "settings": fingerprint(PipelineConfig())})
    assert written[-1] == "settings.format_version" and len(written) > 5
