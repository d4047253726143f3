"""run_study.py as a user runs it: a real subprocess, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    summary = json.loads((session / "final" / "training_summary.json").read_text())
    assert summary["epochs"] == 2 and len(summary["history"]) == 2
    data = json.loads((session / "preprocessing" / "data_summary.json").read_text())
    assert data["source"] == "kaomoji-dataset" and data["rows_sampled"] == 600
    dup = json.loads((session / "preprocessing" / "duplicate_removal_stats.json").read_text())
    split = json.loads((session / "preprocessing" / "split_stats.json").read_text())
    assert dup["original_count"] == 600 and dup["cleaned_count"] == split["train_count"] + split[
        "val_count"] + split["test_count"] + split["leakage_detected"]
    epoch2 = json.loads((session / "checkpoints" / "metrics_epoch_002.json").read_text())
    assert epoch2["epoch"] == 2 and epoch2["val_loss"] > 0


def test_a_user_file_trains_through_a_plugged_in_model(tmp_path):
    out = _run("--data", str(_user_file(tmp_path)), "--model", "examples.bag_of_bytes:build",
               "--epochs", "2", "--backup-dir", str(tmp_path), "--study", "plug")
    assert out.returncode == 0, out.stderr
    epoch = json.loads((tmp_path / "plug" / "checkpoints" / "metrics_epoch_002.json").read_text())
    assert set(epoch["val_module_loss"]) == {"fused", "bag", "conv"}


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--model", "nowhere.mod:make"], "cannot import module 'nowhere.mod'"),
    (["--model", "examples.bag_of_bytes:missing"], "has no callable 'missing'"),
    (["--test-ratio", "0.95"], "val_ratio + test_ratio must be < 1"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, args, message):
    out = _run("--data", str(_user_file(tmp_path)), "--backup-dir", str(tmp_path), "--epochs", "1",
               *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


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
