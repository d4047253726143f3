"""The commands of the "Many machines" page (docs/many-machines.md, once the README's section),
run as written: only the values of its variables, the backup folder and the dashboard's port
are replaced, and --smoke options are added."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from _runs import ROOT, failure_text
from optuna.trial import TrialState
from test_concurrency import _free_port, _wait_for_api

from storage.studies import create_storage

SMOKE = "--smoke --no-progress --seed 3"
PAGE = "docs/many-machines.md"  # where the blocks marked "many-machines" and "torchrun" live


def _block(marker: str) -> list[str]:
    """The lines of the fenced block after ``<!-- marker: ... -->`` in PAGE."""
    text = (ROOT / PAGE).read_text(encoding="utf-8")
    found = re.search(rf"<!-- {marker}:[^>]*-->\n```bash\n(.*?)```", text, re.S)
    assert found, f"{PAGE} has no block marked {marker!r}"
    return [line for line in found.group(1).splitlines() if line.strip()]


def _env() -> dict:
    # The venv's python, torchrun and optuna-dashboard first on PATH, as after activating it.
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_the_many_machines_commands_run_as_written(tmp_path, postgres_url):
    study = f"readme{uuid.uuid4().hex[:8]}"
    script, dashboard = ["set -e"], None
    for line in _block("many-machines"):
        if line.startswith("pip install"):
            continue  # .ci/run installs the extras
        if line.startswith("export URL="):
            line = f"export URL={postgres_url}"
        elif line.startswith("export OPTS="):
            line = f'export OPTS="{SMOKE} --study {study} --backup-dir {tmp_path}/runs"'
        elif line.startswith("optuna-dashboard"):
            dashboard = line.split("#")[0].replace("8080", str(_free_port()))
            continue
        script.append(line)
    workers = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, env=_env(),
                             capture_output=True, text=True, timeout=900)
    assert workers.returncode == 0, workers.stderr[-3000:]
    assert workers.stderr.count("phase 4 done") == 1

    storage = create_storage(postgres_url)
    sweep = optuna.load_study(study_name=f"{study}-lr-sweep", storage=storage)
    finished = Counter(t.params["lr"] for t in sweep.trials
                       if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params)
    assert len(finished) >= 5 and set(finished.values()) == {1}
    assert not [t for t in sweep.trials if t.state == TrialState.FAIL]
    assert (tmp_path / "runs" / study / "final_results.json").is_file()

    assert dashboard is not None
    port = re.search(r"--port (\d+)", dashboard).group(1)
    dash = subprocess.Popen(["bash", "-c", f"export URL={postgres_url}\nexec {dashboard}"],
                            cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        names = {s["study_name"] for s in _wait_for_api(f"http://127.0.0.1:{port}/api")}
        assert {f"{study}-lr-sweep", f"{study}-long-run", f"{study}-crossover"} <= names
    finally:
        dash.terminate()
        dash.communicate(timeout=30)


@pytest.mark.slow
def test_the_torchrun_command_runs_as_written(tmp_path):
    (line,) = _block("torchrun")
    line = line.replace("--backup-dir runs", f"--backup-dir {tmp_path}/runs")
    out = subprocess.run(["bash", "-c", f"{line} {SMOKE} --stop-after 2"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, failure_text(out.stderr)
    assert "with rank 0 from epoch 1," in out.stderr
    study = optuna.load_study(study_name="ddp-long-run",
                              storage=f"sqlite:///{tmp_path}/runs/ddp.db")
    (trial,) = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert trial.user_attrs["processes"] == 2 and len(trial.intermediate_values) == 4
