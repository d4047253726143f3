"""Phases 3-4 replayed on a copy of the unbroken smoke session, one monitor at a time: each
replay's evidence names the monitor that decided, and the source session is untouched."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from _runs import ROOT, SMOKE, STUDY
from optuna.trial import TrialState

from run_study import parse_config
from tuner.replay import replay


def _text(path):
    return path.read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("monitor", ["val_acc", "val_macro_f1", "intent:micro_f1"])
def test_a_replay_under_each_monitor_writes_evidence_that_names_it(unbroken_smoke, tmp_path, monitor):
    source = unbroken_smoke["backup"]
    before = _text(source / STUDY / "final_results.json")
    cfg = parse_config([*SMOKE, "--backup-dir", str(source)])
    results = replay(cfg, tmp_path / "r", monitor=monitor, sweet_spot_method="splice")
    session = tmp_path / "r" / STUDY
    analysis = json.loads(_text(session / "analysis" / "sweet_spot_analysis.json"))
    recipe = json.loads(_text(session / "final" / "recipe.json"))
    assert results["monitor"] == analysis["monitor"] == recipe["monitor"] == monitor
    assert analysis["method"] == "splice"
    assert all(s["method"] == "splice" for s in analysis["sweet_spots"].values())
    assert f"Monitor: `{monitor}`" in _text(session / "final" / "report.md")
    assert monitor in recipe["chosen_on"]
    crossover = optuna.load_study(study_name=f"{STUDY}-crossover",
                                  storage=f"sqlite:///{tmp_path / 'r'}/{STUDY}.db")
    assert crossover.direction == optuna.study.StudyDirection.MAXIMIZE  # accuracies, F1s
    assert _text(source / STUDY / "final_results.json") == before  # the source is untouched


def test_the_default_run_names_its_monitor_and_gives_every_group_spliced_evidence(unbroken_smoke):
    session = unbroken_smoke["backup"] / STUDY
    analysis = json.loads(_text(session / "analysis" / "sweet_spot_analysis.json"))
    results = json.loads(_text(session / "final_results.json"))
    assert results["monitor"] == analysis["monitor"] == "val_loss"
    assert set(analysis["curves"]["spliced"]) == set(analysis["sweet_spots"])
    # The crossover searched windows: every trial names a span for every group, and the
    # queued trials are the sweet spots, the best single checkpoint and the uniform soup.
    study = optuna.load_study(study_name=f"{STUDY}-crossover",
                              storage=f"sqlite:///{unbroken_smoke['backup']}/{STUDY}.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    groups = set(analysis["sweet_spots"])
    assert all({f"{g}:span" for g in groups} <= set(t.params) for t in done)
    queued = [t.params for t in done if "queued_recipe" in t.user_attrs]
    n = len(analysis["curves"]["checkpoints"])
    assert {t[f"{g}:span"] for t in queued[-1:] for g in groups} == {n}  # the uniform soup
    assert study.direction == optuna.study.StudyDirection.MINIMIZE


@pytest.mark.slow
def test_a_rerun_with_another_monitor_is_refused_with_the_settings_diff(unbroken_smoke):
    out = subprocess.run([sys.executable, str(ROOT / "run_study.py"), *SMOKE, "--backup-dir",
                          str(unbroken_smoke["backup"]), "--monitor", "val_acc"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "monitor: 'val_loss' -> 'val_acc'" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("monitor", "expected"), [
    ("intent:mse", "task 'intent' is multi, which gives accuracy, micro_f1, loss, not mse"),
    ("sentiment:accuracy", "the data has no task 'sentiment'"),
])
def test_a_monitor_the_data_cannot_give_exits_2_before_anything_is_written(tmp_path, monitor, expected):
    out = subprocess.run([sys.executable, str(ROOT / "run_study.py"), *SMOKE, "--backup-dir",
                          str(tmp_path / "b"), "--monitor", monitor], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("*"))
