"""What the terminal tells the user: defaults in --help, refused setting changes on a
rerun, refused sessions of another format, deprecated spellings, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import run_study
from model.training import TrainConfig
from tuner.long_run import LongRunConfig
from tuner.lr_sweep import SweepConfig
from tuner.pipeline import PipelineConfig
from tuner.settings import FORMAT_VERSION

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, progress: bool = False) -> subprocess.CompletedProcess:
    flags = [] if progress else ["--no-progress"]
    return subprocess.run([sys.executable, str(ROOT / "run_study.py"), *flags, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_help_quotes_the_dataclass_defaults():
    text = " ".join(run_study.build_parser().format_help().split())  # argparse wraps lines
    assert f"maximum epochs (the strategy's) (default: {LongRunConfig().epochs})" in text
    assert f"epochs per LR (default: {SweepConfig().epochs})" in text
    assert f"--batch-size BATCH_SIZE rows per micro-batch (default: {TrainConfig().batch_size})" in text
    assert (f"seeded sample size; of the train file for a folder of splits (default: "
            f"{PipelineConfig().max_samples})") in text
    assert "(default: None)" not in text


def test_a_flag_left_unset_keeps_the_dataclass_default():
    cfg = run_study.config_from_args(run_study.build_parser().parse_args([]))
    assert cfg == PipelineConfig()
    cfg = run_study.config_from_args(run_study.build_parser().parse_args(["--epochs", "7"]))
    assert cfg.long_run.epochs == 7 and cfg.train == TrainConfig()


def test_the_old_seed_spellings_of_the_strategy_rules_still_work_with_a_warning():
    args = run_study.build_parser().parse_args(["--selection-method", "seed",
                                           "--overfit-criterion", "seed"])
    with pytest.warns(FutureWarning, match="--selection-method seed is deprecated"):
        cfg = run_study.config_from_args(args)
    assert cfg.selection_method == "strategy" and cfg.overfit.decide_by == "gap-rise"


def _phase0(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run("--backup-dir", str(tmp_path), "--study", "s", "--max-samples", "300",
                "--stop-after", "0", *extra)


def test_a_rerun_with_other_settings_is_refused_with_a_diff_and_touches_nothing(tmp_path):
    assert _phase0(tmp_path, "--epochs", "4").returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    out = _phase0(tmp_path, "--epochs", "6", "--preset", "tiny")
    assert out.returncode == 2
    assert "was run with other settings" in out.stderr
    assert "long_run.epochs: 4 -> 6" in out.stderr
    assert "preset: 'ngram' -> 'tiny'" in out.stderr
    assert "--study <new name>" in out.stderr and "Traceback" not in out.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()} == before
    # What decides how much runs or what is shown may change.
    assert _phase0(tmp_path, "--epochs", "4", "--crossover-trials", "9").returncode == 0


def test_a_session_of_another_format_version_is_refused(tmp_path):
    assert _phase0(tmp_path).returncode == 0
    settings = tmp_path / "s" / "settings.json"
    old = json.loads(settings.read_text())
    settings.write_text(json.dumps({**old, "format_version": FORMAT_VERSION - 1}))
    out = _phase0(tmp_path)
    assert out.returncode == 2
    assert f"session format {FORMAT_VERSION - 1}" in out.stderr
    assert "Traceback" not in out.stderr
    settings.unlink()  # a session from before settings were recorded
    out = _phase0(tmp_path)
    assert out.returncode == 2 and "older version of redheart-tuner" in out.stderr


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_no_traceback(tmp_path):
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A shell starts a background job with SIGINT ignored, and a child inherits that: the
        # run below could not get a Ctrl-C whatever it did.
        pytest.skip("SIGINT is ignored in this process (started in the background)")
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_study.py"), "--no-progress",
                             "--smoke", "--backup-dir", str(tmp_path)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "epoch 1/2" in line:  # inside an LR sweep trial
            os.kill(proc.pid, signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[1]
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: rerun the same command to resume" in rest
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def _tmpfs(tmp_path: Path, size: str):
    """A real tmpfs of ``size`` (root and mount(8) needed; skipped where the machine refuses)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture()
def small_disk(tmp_path):
    """12 MB: room for the sweep, not for the long run's checkpoints."""
    yield from _tmpfs(tmp_path, "12m")


@pytest.fixture()
def tiny_disk(tmp_path):
    """600 KB: the SQLite storage fills up during the LR sweep, while its bar is drawn."""
    yield from _tmpfs(tmp_path, "600k")


@pytest.mark.slow
def test_an_error_exit_closes_the_progress_bars_before_its_one_line(tiny_disk):
    out = _run("--smoke", "--backup-dir", str(tiny_disk), "--study", "s", progress=True)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert any(line.startswith("LR sweep:") for line in lines)  # the bar was drawn ...
    assert lines[-1].startswith("error: the Optuna storage") and "Traceback" not in out.stderr
    assert "ran out of disk space" in lines[-1]  # ... and closed before the error line


@pytest.mark.slow
def test_a_full_disk_names_the_place_and_the_rerun_after_freeing_space_resumes(small_disk):
    args = ["--smoke", "--backup-dir", str(small_disk), "--study", "s"]
    out = _run(*args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "no space left on the disk of" in out.stderr and str(small_disk / "s") in out.stderr
    assert "rerun the same command to resume" in out.stderr and "Traceback" not in out.stderr
    subprocess.run(["mount", "-o", "remount,size=1g", str(small_disk)], check=True)
    out = _run(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (small_disk / "s" / "final_results.json").is_file()
