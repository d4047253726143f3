"""The storage contract the tuner relies on, on every storage it supports: SQLite, the
journal file and a real PostgreSQL server (skipped loudly without one, failed under CI)."""

from __future__ import annotations

import uuid

import optuna
import pytest
from optuna.trial import TrialState

from storage.studies import create_storage, name_metrics
from tuner.lr_sweep import grid_claims

BACKENDS = ["sqlite", "journal", "postgres"]


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    if request.param == "journal":
        return f"journal:///{tmp_path}/s.log"
    return request.getfixturevalue("postgres_url")


def _study(url: str) -> optuna.Study:
    name = f"contract-{uuid.uuid4().hex[:12]}"  # a shared server outlives the test
    return optuna.create_study(study_name=name, storage=create_storage(url), load_if_exists=True)


def test_a_study_and_its_attrs_survive_reopening(url):
    study = _study(url)
    name_metrics(study, ["val_loss"])
    study.set_user_attr("settings", {"format_version": 2, "settings": {"preset": "ngram"}})
    again = optuna.load_study(study_name=study.study_name, storage=create_storage(url))
    assert again.metric_names == ["val_loss"]
    assert again.user_attrs["settings"]["settings"] == {"preset": "ngram"}


def test_ask_tell_and_failing_a_trial_by_number(url):
    study = _study(url)
    live = study.ask()
    live.suggest_float("lr", 1e-2, 1e-2)
    live.report(1.5, 1)
    dead = study.ask()
    study.tell(dead.number, state=TrialState.FAIL, skip_if_finished=True)  # how stale trials end
    study.tell(live, 1.2)
    other = optuna.load_study(study_name=study.study_name, storage=create_storage(url))
    states = {t.number: t.state for t in other.trials}
    assert states == {live.number: TrialState.COMPLETE, dead.number: TrialState.FAIL}
    assert other.trials[live.number].intermediate_values == {1: 1.5}


def test_a_queued_trial_is_popped_once_with_its_params_and_user_attrs(url):
    study = _study(url)
    study.enqueue_trial({"a": 2}, user_attrs={"queued_recipe": {"a": 2}})
    trial = study.ask()
    assert trial.suggest_categorical("a", [2, 4]) == 2
    assert trial.user_attrs["queued_recipe"] == {"a": 2}
    assert [t.state for t in study.trials] == [TrialState.RUNNING]


def test_two_workers_asking_at_once_claim_different_grid_points(url):
    grid = (1e-3, 1e-2, 1e-1)
    first, second = _study(url), None
    second = optuna.load_study(study_name=first.study_name, storage=create_storage(url))
    a, b = first.ask(), second.ask()          # both asked before either knows its LR
    alive = lambda t: False  # noqa: E731 (is_gone: nobody is gone)
    claims_a = grid_claims(first.get_trials(deepcopy=False), grid, alive)
    claims_b = grid_claims(second.get_trials(deepcopy=False), grid, alive)
    assert claims_a == claims_b                                   # every worker agrees
    assert {claims_a[a.number], claims_b[b.number]} == {1e-1, 1e-2}
