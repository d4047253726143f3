"""The long run under torchrun with 2 CPU processes (gloo): the same steps as one process,
rank 0 alone reporting and writing, and resume after the whole job is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import psutil
import pytest
from _runs import ONE_LR, ROOT, SMOKE, STUDY
from optuna.trial import TrialState

# The long run is what runs on two processes: one LR of one epoch is sweep enough.
PHASE2 = ["--stop-after", "2", *ONE_LR]
OFF = ["--dropout", "0", "--r-drop", "0"]  # no random masks that differ per rank


def _args(backup: Path, *extra: str) -> list[str]:
    return [str(ROOT / "run_study.py"), *SMOKE, "--backup-dir", str(backup), *PHASE2, *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _one(backup: Path, *extra: str) -> None:
    out = subprocess.run([sys.executable, *_args(backup, *extra)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]


def _torchrun(backup: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            *_args(backup, *extra)]


def _two(backup: Path, *extra: str) -> str:
    out = subprocess.run(_torchrun(backup, *extra), cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


def _long_run(backup: Path, seed_study: str = STUDY) -> optuna.trial.FrozenTrial:
    study = optuna.load_study(study_name=f"{seed_study}-long-run",
                              storage=f"sqlite:///{backup}/{seed_study}.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1
    return done[0]


def _val_losses(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One unbroken 2-process long run with dropout and R-Drop on (the defaults)."""
    backup = tmp_path_factory.mktemp("ddp")
    log = _two(backup)
    return backup, log


@pytest.mark.slow
def test_two_processes_take_the_same_steps_as_one_when_nothing_random_differs(tmp_path):
    _one(tmp_path / "one", *OFF)
    log = _two(tmp_path / "two", *OFF)
    one, two = _long_run(tmp_path / "one"), _long_run(tmp_path / "two")
    assert two.user_attrs["processes"] == 2 and "processes" not in one.user_attrs
    print("epoch  1 process  2 processes")
    for epoch in sorted(one.intermediate_values):
        print(f"{epoch:5d}  {one.intermediate_values[epoch]:.6f}   "
              f"{two.intermediate_values[epoch]:.6f}")
    assert _val_losses(two) == pytest.approx(_val_losses(one), abs=1e-4)
    train = [(one.user_attrs[k]["train_loss"], two.user_attrs[k]["train_loss"])
             for k in sorted(one.user_attrs) if k.startswith("epoch_")]
    assert [b for _, b in train] == pytest.approx([a for a, _ in train], abs=1e-4)
    # The optimizer steps per epoch are the configured global batches, not twice as many.
    assert one.user_attrs["epoch_001"]["optimizer_steps"] == two.user_attrs["epoch_001"][
        "optimizer_steps"]
    # Rank 1 trained and left; only rank 0 wrote the session folder.
    assert "with rank 0 from epoch 1," in log and "rank 1: the long run is done" in log
    assert not list((tmp_path / "two").glob("*/checkpoints/*rank*"))


@pytest.mark.slow
def test_with_dropout_on_two_processes_land_within_the_spread_of_seeds(tmp_path, two_process_run,
                                                                        unbroken_smoke):
    finals = [_val_losses(_long_run(unbroken_smoke["backup"]))[-1]]  # seed 3, one process
    for seed in ("4", "5"):
        _one(tmp_path / seed, "--seed", seed)
        finals.append(_val_losses(_long_run(tmp_path / seed))[-1])
    two = _val_losses(_long_run(two_process_run[0]))[-1]
    print(f"final val loss: 2 processes {two:.4f}; 1 process, seeds 3-5: "
          f"{', '.join(f'{v:.4f}' for v in finals)}")
    assert min(finals) <= two <= max(finals)


@pytest.mark.slow
def test_a_sigkilled_torchrun_job_resumes_to_the_unbroken_result(tmp_path, two_process_run):
    backup = tmp_path / "b"
    job = subprocess.Popen(_torchrun(backup), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                           env=_env())
    seen = []
    for line in job.stderr:
        seen.append(line)
        if "long run epoch 2/6" in line:
            # The agent and every rank at once, as a power cut would (torchrun starts
            # the ranks in sessions of their own, so its process group is not enough).
            for proc in [*psutil.Process(job.pid).children(recursive=True), psutil.Process(job.pid)]:
                proc.send_signal(signal.SIGKILL)
            break
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL, "".join(seen[-20:])
    log = _two(backup)
    assert "resuming after epoch 2" in log
    trial, unbroken = _long_run(backup), _long_run(two_process_run[0])
    assert trial.user_attrs["continues_trial"] is not None
    assert _val_losses(trial) == pytest.approx(_val_losses(unbroken), abs=1e-6)
