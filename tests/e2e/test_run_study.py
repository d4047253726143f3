"""run_study.py as a user runs it: a real subprocess, real files, exit codes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna_dashboard import get_note

from model import ByteTokenizer, build_model
from model.training import evaluate
from storage import load_embedded
from tuner.final import load_final_model

ROOT = Path(__file__).resolve().parents[2]



def _system_attrs(url: str, study_name: str) -> dict:
    """A study's system attrs through the storage's public API (the dashboard keeps its
    figures there)."""
    storage = optuna.storages.RDBStorage(url)
    return storage.get_study_system_attrs(storage.get_study_id_from_name(study_name))

def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_study.py"), "--no-progress", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def _user_file(tmp_path: Path) -> Path:
    rows = [{"text": f"{t} {i}", "label": t} for i in range(40) for t in ("기쁨", "슬픔", "화남")]
    f = tmp_path / "data.json"
    f.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return f


def test_help_lists_the_flags():
    out = _run("--help")
    assert out.returncode == 0
    for flag in ("--data", "--preset", "--model", "--epochs", "--max-samples", "--smoke"):
        assert flag in out.stdout


@pytest.mark.slow
def test_smoke_run_on_the_embedded_corpus_writes_its_evidence(tmp_path):
    out = _run("--smoke", "--backup-dir", str(tmp_path), "--study", "s")
    assert out.returncode == 0, out.stderr
    session = tmp_path / "s"
    for sub in ("preprocessing", "lr_sweep", "checkpoints", "analysis", "final"):
        assert (session / sub).is_dir()
    summary = json.loads((session / "checkpoints" / "long_run_summary.json").read_text())
    assert summary["epochs"] == 4 and summary["checkpoints"] == [2, 4]
    assert summary["training_complete"] is True
    data = json.loads((session / "preprocessing" / "data_summary.json").read_text())
    assert data["source"] == "kaomoji-dataset" and data["rows_sampled"] == 400
    report = json.loads((session / "lr_sweep" / "lr_selection_report.json").read_text())
    assert report["selected_lr"] == summary["lr"]
    assert (session / "lr_sweep" / "lr_curves_data.json").is_file()
    assert "watch it live: optuna-dashboard sqlite:///" in out.stderr
    assert "--host 127.0.0.1" in out.stderr
    storage = f"sqlite:///{tmp_path}/s.db"
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"s-lr-sweep", "s-long-run", "s-crossover"}
    sweep = optuna.load_study(study_name="s-lr-sweep", storage=storage)
    assert sweep.user_attrs["selection"]["selected_lr"] == report["selected_lr"]
    note = get_note(sweep)
    assert note.startswith("# LR selection") and "Selected LR" in note
    _check_phase4(session, storage)
    # A rerun finds everything done: no trial is run again.
    counts = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    files = {p: p.read_bytes() for p in session.rglob("*") if p.is_file() and p.suffix != ".log"}
    again = _run("--smoke", "--backup-dir", str(tmp_path), "--study", "s")
    assert again.returncode == 0, again.stderr
    assert counts == {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    # ... and leaves every evidence file (and artifact) as it was: nothing uploaded twice.
    assert {p: p.read_bytes() for p in session.rglob("*") if p.is_file() and p.suffix != ".log"} == files
    assert "--artifact-dir" in again.stderr and str(session / "artifacts") in again.stderr


def _check_phase4(session: Path, storage: str) -> None:
    results = json.loads((session / "final_results.json").read_text())
    for key in ("session_id", "best_lr", "sweet_spots", "data_stats", "lr_sweep",
                "training_complete", "timestamp", "crossover_recipe", "test_table"):
        assert key in results
    names = [r["candidate"] for r in results["test_table"]]
    assert names == ["best_single_checkpoint", "last_epoch", "ema", "sweet_spot_crossover",
                     "optimized_crossover", "variant_ensemble", "uniform_soup", "greedy_soup",
                     "linear_baseline", "majority_class"]
    table = {r["candidate"]: r for r in results["test_table"]}
    assert table["linear_baseline"]["reference"] and table["majority_class"]["reference"]
    assert table["linear_baseline"]["test_acc"] > table["majority_class"]["test_acc"]
    for row in results["test_table"]:  # intervals and the paired verdict on every row
        ci = row["test_ci"]
        assert ci["acc"]["ci"][0] <= row["test_acc"] <= ci["acc"]["ci"][1]
        assert ci["resamples"] == 1000 and "acc_vs_best_single_checkpoint" in ci
        assert row["verdict"].startswith(row["candidate"].replace("_", " "))
    crossover = optuna.load_study(study_name="s-crossover", storage=storage)
    queued = {str(t.params) for t in crossover.trials if "queued_recipe" in t.user_attrs}
    # The sweet spots, the best single checkpoint and the uniform soup (fewer where two are
    # the same recipe), then 4 TPE trials.
    assert 1 <= len(queued) <= 3 and len(crossover.trials) == 4 + len(queued)
    # The final model, loaded into a fresh model, gives exactly the reported metrics.
    recipe = json.loads((session / "final" / "recipe.json").read_text())
    ds = load_embedded(400, seed=0)
    splits = json.loads((session / "preprocessing" / "phase0_state.json").read_text())["splits"]
    assert recipe["method"] not in ("linear_baseline", "majority_class")
    model = load_final_model(build_model("ngram-tiny", ds.tasks), session)
    # The recipe's val figures are the search rows' (val without the held-out selection rows).
    held = set(json.loads((session / "analysis" / "val_split.json").read_text())["selection"])
    rows = {"val": [i for k, i in enumerate(splits["val"]) if k not in held],
            "test": splits["test"]}
    for split in ("val", "test"):
        data = ds.encode([ds.records[i] for i in rows[split]], ByteTokenizer(128))
        metrics = evaluate(model, data, ds.tasks)
        assert metrics["loss"] == recipe[f"{split}_loss"]
        assert metrics["acc"] == recipe[f"{split}_acc"]
    dup = json.loads((session / "preprocessing" / "duplicate_removal_stats.json").read_text())
    split = json.loads((session / "preprocessing" / "split_stats.json").read_text())
    assert dup["original_count"] == 400 and dup["cleaned_count"] == split["train_count"] + split[
        "val_count"] + split["test_count"] + split["leakage_detected"]
    _check_report_and_dashboard(session, storage, results)
    analysis = json.loads((session / "analysis" / "sweet_spot_analysis.json").read_text())
    assert set(analysis["criteria"]) == {"gap-rise", "gl", "pq", "up"}
    assert set(analysis["sweet_spots"]) == {"group_a_backbone_heads", "group_b_neural",
                                            "group_c_dsp_kalman", "advanced_emotion",
                                            "advanced_intent", "advanced_subject"}
    assert all(v["epoch"] in (2, 4) for v in analysis["sweet_spots"].values())
    epoch2 = json.loads((session / "checkpoints" / "metrics_epoch_002.json").read_text())
    assert epoch2["epoch"] == 2 and epoch2["metrics"]["val_loss"] > 0
    assert set(epoch2["detailed"]["parameter_stats"]) == set(epoch2["detailed"]["gradient_stats"])


def _check_report_and_dashboard(session: Path, storage: str, results: dict) -> None:
    report = (session / "final" / "report.md").read_text()
    for heading in ("## Data (phase 0)", "## Learning rate (phase 1)", "## Long run, overfitting",
                    "## Crossover search (phase 4)", "## Test table", "## Final model"):
        assert heading in report
    for row in results["test_table"]:
        name = f"{row['candidate']} (*reference*)" if row.get("reference") else row["candidate"]
        assert f"| {name} | {row['val_loss']:.4f} | {row['test_loss']:.4f} |" in report
        if row is not results["test_table"][0]:
            assert f"- {row['verdict']}." in report
    assert "**Grid:** LR" in report
    assert "**Final model against the linear baseline** (paired bootstrap): test accuracy, " in report
    for png in ("lr_sweep", "learning_curves", "lr_schedule", "crossover_search", "test_table"):
        assert f"]({png}.png)" in report
        assert (session / "final" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    store = FileSystemArtifactStore(str(session / "artifacts"))
    expected = {"s-lr-sweep": {"lr_selection_report.json", "lr_curves_data.json", "lr_sweep.png"},
                "s-long-run": {"long_run_summary.json", "sweet_spot_analysis.json",
                               "learning_curves.png", "lr_schedule.png"},
                "s-crossover": {"recipe.json", "report.md", "crossover_search.png",
                                "test_table.png", "final_results.json"}}
    for name, files in expected.items():
        study = optuna.load_study(study_name=name, storage=storage)
        metas = get_all_artifact_meta(study)
        assert {m.filename for m in metas} == files
        for m in metas:  # each artifact is the file of the session, byte for byte
            with store.open_reader(m.artifact_id) as fh:
                assert hashlib.sha256(fh.read()).hexdigest() == study.user_attrs["artifacts"][
                    m.filename]["sha256"]
        assert get_note(study)
        attrs = _system_attrs(storage, name)
        figures = any(k.startswith("dashboard:plot_data:") for k in attrs)
        # Plotly figures only where the report has no picture of it (the LR scores, Optuna's
        # optimization history); the learning curves are the report's PNG artifacts.
        assert figures == (name != "s-long-run"), sorted(attrs)
        assert study.metric_names and study.metric_names[0] in {"avg_val_loss", "best_val_loss",
                                                                "val_loss"}
    final = hashlib.sha256((session / "final_results.json").read_bytes()).hexdigest()
    crossover = optuna.load_study(study_name="s-crossover", storage=storage)
    assert crossover.user_attrs["artifacts"]["final_results.json"]["sha256"] == final


def test_a_user_file_trains_through_a_plugged_in_model(tmp_path):
    out = _run("--data", str(_user_file(tmp_path)), "--model", "examples.bag_of_bytes:build",
               "--epochs", "2", "--sweep-epochs", "1", "--lr-grid", "1e-3,3e-3",
               "--backup-dir", str(tmp_path), "--study", "plug")
    assert out.returncode == 0, out.stderr
    epoch = json.loads((tmp_path / "plug" / "checkpoints" / "metrics_epoch_002.json").read_text())
    assert set(epoch["metrics"]["val_module_loss"]) == {"fused", "bag", "conv"}
    assert sorted(p.name for p in (tmp_path / "plug" / "checkpoints" / "epoch_002").iterdir()) == [
        "bag.safetensors", "conv.safetensors", "ema.safetensors", "manifest.json"]


def test_a_toml_config_sets_defaults_and_flags_override_it(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'''
data-path = "{_user_file(tmp_path)}"
study_name = "fromtoml"
lr-grid = [2e-3]
sweep-epochs = 1
epochs = 3
checkpoint-every = 1
backup-dir = "{tmp_path}"
''')
    out = _run("--config", str(cfg), "--epochs", "2")
    assert out.returncode == 0, out.stderr
    session = tmp_path / "fromtoml"
    assert sorted(p.name for p in (session / "checkpoints").glob("epoch_*")) == [
        "epoch_001", "epoch_002"]


def test_an_unknown_key_in_the_config_file_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('learning_rate = 3\n')
    out = _run("--config", str(cfg))
    assert out.returncode == 2
    assert "bad.toml: unknown setting 'learning_rate'" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--model", "nowhere.mod:make"], "cannot import module 'nowhere.mod'"),
    (["--model", "examples.bag_of_bytes:missing"], "has no callable 'missing'"),
    (["--test-ratio", "0.95"], "val_ratio + test_ratio must be < 1"),
    (["--storage", "postgresql+psycopg://u:pw9@127.0.0.1:1/x"], "cannot be opened"),
    (["--lr-grid", "1e-3,abc"], "--lr-grid must be comma-separated numbers"),
    (["--device", "cuda"], "has no CUDA device"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, args, message):
    out = _run("--data", str(_user_file(tmp_path)), "--backup-dir", str(tmp_path), "--epochs", "1",
               *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert "pw9" not in out.stderr


def test_every_row_a_duplicate_exits_2_and_writes_no_phase0_state(tmp_path):
    f = tmp_path / "dups.json"
    f.write_text(json.dumps([{"text": "same text", "label": i % 2} for i in range(20)]))
    out = _run("--data", str(f), "--backup-dir", str(tmp_path), "--study", "d")
    assert out.returncode == 2
    assert "1 rows are left after near-duplicate removal" in out.stderr
    assert not (tmp_path / "d" / "preprocessing" / "phase0_state.json").exists()


def test_a_bad_row_exits_2_naming_file_row_and_field(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"text": "ok", "label": "a"}\n{"text": "ok", "label": "b"}\n{"label": "a"}\n')
    out = _run("--data", str(f), "--backup-dir", str(tmp_path))
    assert out.returncode == 2
    assert "broken.jsonl: row 2 (line 3): field 'text' is missing" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_an_edge_optimum_extends_the_grid_and_the_report_says_so(tmp_path):
    # 1e-4 and 2e-4 barely move the n-gram model in 2 epochs: the largest LR wins, so
    # the sweep adds 4e-4 and then 8e-4, and still finds the optimum on the edge.
    args = ("--smoke", "--backup-dir", str(tmp_path), "--study", "g", "--lr-grid", "1e-4,2e-4",
            "--stop-after", "1")
    out = _run(*args)
    assert out.returncode == 0, out.stderr
    assert "adding LR 0.0004 beyond it (extension 1 of 2)" in out.stderr
    assert "adding LR 0.0008 beyond it (extension 2 of 2)" in out.stderr
    report = json.loads((tmp_path / "g" / "lr_sweep" / "lr_selection_report.json").read_text())
    grid = report["grid"]
    assert grid["extended"] == [4e-4, 8e-4] and grid["tried"] == [1e-4, 2e-4, 4e-4, 8e-4]
    assert report["selected_lr"] == 8e-4 and grid["edge"] == "upper"
    assert "still on the edge after 2 extension point(s)" in grid["message"]
    storage = f"sqlite:///{tmp_path}/g.db"
    sweep = optuna.load_study(study_name="g-lr-sweep", storage=storage)
    note = get_note(sweep)
    assert grid["message"] in note
    # A rerun re-derives the same extension from the study and runs nothing again.
    assert _run(*args).returncode == 0
    assert len(optuna.load_study(study_name="g-lr-sweep", storage=storage).trials) == 4


def test_the_early_stop_fires_and_its_checkpoint_stores_the_ema_that_phase_4_reads(
        unbroken_smoke):
    # The tests' smoke run may train 6 epochs but stops after epoch 4 (see tests/_runs.py).
    root = unbroken_smoke["backup"] / "c" / "checkpoints"
    stop = json.loads((root / "early_stop.json").read_text())
    assert stop["stopped_early"] and stop["last_epoch"] == 4 and stop["max_epochs"] == 6
    assert stop["epochs_saved"] == 2 and stop["seconds_saved_estimate"] > 0
    assert stop["monitor"] == {"name": "val_loss", "best_epoch": 2, "checkpoints_since": 1}
    assert set(stop["groups"]) == {"advanced_emotion", "advanced_intent", "advanced_subject"}
    assert "cosine over the maximum 6 epochs; stopped at epoch 4" in stop["lr_schedule"]
    assert sorted(p.name for p in root.glob("epoch_*")) == ["epoch_002", "epoch_004"]
    assert not (root / "epoch_002" / "ema.safetensors").exists()
    assert (root / "epoch_004" / "ema.safetensors").is_file()  # the checkpoint it stopped at
    long_run = optuna.load_study(study_name="c-long-run",
                                 storage=f"sqlite:///{unbroken_smoke['backup']}/c.db")
    summary = long_run.best_trial.user_attrs["summary"]
    assert summary["epochs"] == 4 and summary["max_epochs"] == 6
    assert summary["early_stop"] == stop
    rows = {r["candidate"] for r in json.loads(
        (unbroken_smoke["backup"] / "c" / "final_results.json").read_text())["test_table"]}
    assert "ema" in rows
