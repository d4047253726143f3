"""A worker whose trial another worker took over stops training it: at its next epoch
boundary it says so in one line, writes nothing more to that trial, and goes back to the
work that is left, as an idle worker does."""

from __future__ import annotations

import os
import signal
import subprocess

import optuna
import pytest
from _runs import STUDY, command, outcome
from optuna.trial import TrialState

pytestmark = pytest.mark.slow


def _take_over(url: str, study_name: str) -> int:
    """What another worker does to a trial it finds silent: fail it (the storage's public
    API, as optuna.storages.fail_stale_trials does). Returns the trial's number."""
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name(study_name)
    running = [t for t in storage.get_all_trials(study_id) if t.state == TrialState.RUNNING]
    assert len(running) == 1, running
    number = running[0].number
    storage.set_trial_state_values(
        storage.get_trial_id_from_study_id_trial_number(study_id, number), TrialState.FAIL)
    return number


@pytest.mark.parametrize(("marker", "suffix", "says"), [
    ("LR 0.02 epoch 1/2", "lr-sweep", "LR sweep: stopped training LR 0.02"),
    ("long run epoch 2/6", "long-run", "long run: stopped training"),
])
def test_a_worker_whose_trial_was_taken_over_stops_training_it(marker, suffix, says, tmp_path,
                                                               unbroken_smoke):
    url = f"sqlite:///{tmp_path}/{STUDY}.db"
    proc = subprocess.Popen(command(tmp_path), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    lines, taken = [], None
    for line in proc.stderr:
        lines.append(line)
        if taken is None and marker in line:
            os.kill(proc.pid, signal.SIGSTOP)  # mid-trial, as a silent worker looks
            taken = _take_over(url, f"{STUDY}-{suffix}")
            os.kill(proc.pid, signal.SIGCONT)
    proc.wait(timeout=600)
    log = "".join(lines)
    assert taken is not None, log[-3000:]
    assert proc.returncode == 0, log[-3000:]
    assert log.count(says) == 1 and "another worker took it over" in log
    assert "Traceback" not in log
    study = optuna.load_study(study_name=f"{STUDY}-{suffix}", storage=url)
    lost = study.trials[taken]
    assert lost.state == TrialState.FAIL
    # It stopped at the epoch boundary after the takeover: no later epoch was reported.
    assert max(lost.intermediate_values, default=0) <= int(marker.split("epoch ")[1][0])
    # The work went on (here the same worker took the point over again) to the unbroken result.
    assert outcome(tmp_path)["final_results"] == unbroken_smoke["outcome"]["final_results"]
