"""A PostgreSQL server that goes away mid-run, on a cluster of its own (stopping it cannot
disturb the storage tests beside it): an outage shorter than --storage-patience in each
phase is ridden out to the unbroken result; a longer one ends the worker with exit 2 and
one line, and the rerun resumes to the unbroken result; a call whose connection dies in the
middle of its statement restarts the worker, which resumes to the unbroken result."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _runs import ROOT, command

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("storage-outage")]

# A crash point of each phase (storage.faults) where the worker stalls, between two storage
# calls: the server is stopped while it sleeps there, so the outage never begins in the middle
# of a statement (the case storage.outage documents as not covered), whatever the machine's
# load. Stopping on a log line instead raced the worker into its next call.
PHASES = {"sweep": "sweep:lr=0.02:epoch=1#1", "long run": "long:epoch=1#1",
          "phase 4": "crossover:trial:0#1"}
STALL_S = 4.0  # long enough to stop the server, shorter than any outage below


_spec = importlib.util.spec_from_file_location("_pg_cluster", ROOT / "bench" / "_pg_cluster.py")
_pg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pg)
Cluster = _pg.Cluster


@pytest.fixture(scope="module")
def cluster():
    why = _pg.available()
    if why is not None:
        message = f"the outage tests {why}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with _pg.cluster() as c:
        yield c


def _fresh_db(cluster: Cluster) -> str:
    return cluster.fresh_db()


def _run_with_outages(backup: Path, url: str, cluster: Cluster, points: list[str],
                      outage_s: float, patience_s: float) -> subprocess.CompletedProcess:
    """Run the smoke study on ``url``, stalling at each of ``points`` (in order); while it
    stalls there, stop the server, and start it again after ``outage_s`` (or once the worker
    has exited). The worker wakes into the outage."""
    trace = backup.parent / f"{backup.name}-trace.txt"
    env = {**os.environ, "REDHEART_CRASH_TRACE": str(trace),
           "REDHEART_STALL_AT": ";".join(f"{p}={STALL_S}" for p in points)}
    proc = subprocess.Popen(command(backup, "--storage", url, "--storage-patience", str(patience_s)),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    todo = list(points)
    while todo and proc.poll() is None:
        if todo[0] not in (trace.read_text().split() if trace.exists() else []):
            time.sleep(0.05)
            continue
        todo.pop(0)
        cluster.stop()  # the worker sleeps at the point: no statement of its own in flight
        down_at = time.monotonic()
        while proc.poll() is None and time.monotonic() - down_at < outage_s:
            time.sleep(0.2)
        cluster.start()
    proc.wait(timeout=600)
    reader.join(timeout=60)
    assert not todo, f"never reached {todo}:\n" + "".join(lines[-20:])
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(lines))


def _result(backup: Path) -> dict:
    session = backup / "c"
    results = json.loads((session / "final_results.json").read_text())
    del results["timestamp"]
    model = (session / "final" / "optimal_crossover_model.safetensors").read_bytes()
    return {"results": results, "model": hashlib.sha256(model).hexdigest()}


@pytest.fixture(scope="module")
def unbroken(cluster, tmp_path_factory):
    """The smoke study on the same server, never interrupted."""
    backup = tmp_path_factory.mktemp("unbroken-pg")
    out = subprocess.run(command(backup, "--storage", _fresh_db(cluster)), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return _result(backup)


def test_outages_shorter_than_the_patience_in_every_phase_are_ridden_out_to_the_unbroken_result(
        cluster, unbroken, tmp_path):
    out = _run_with_outages(tmp_path, _fresh_db(cluster), cluster, list(PHASES.values()),
                            outage_s=10, patience_s=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    # One line when the connection is lost and one when it is back, for each outage.
    assert out.stderr.count("the database connection is lost") == len(PHASES)
    assert out.stderr.count("the database is back after") == len(PHASES)
    assert _result(tmp_path) == unbroken


@pytest.mark.parametrize("phase", list(PHASES))
def test_an_outage_longer_than_the_patience_exits_2_with_one_line_and_the_rerun_resumes(
        phase, cluster, unbroken, tmp_path):
    url = _fresh_db(cluster)
    out = _run_with_outages(tmp_path, url, cluster, [PHASES[phase]], outage_s=12, patience_s=3)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: the Optuna storage postgresql+psycopg://redheart:***@")
    assert "unreachable for more than 3 s (--storage-patience)" in last
    assert "rerun the same command to resume" in last
    rerun = subprocess.run(command(tmp_path, "--storage", url), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _result(tmp_path) == unbroken


# Holds every INSERT into Optuna's trials table in the server (a trial being created: the
# call storage.outage cannot retry, its outcome unknown) until the test ends its connection.
_HOLD_INSERTS = """CREATE FUNCTION redheart_hold() RETURNS trigger AS $$
BEGIN PERFORM pg_sleep(300); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER redheart_hold BEFORE INSERT ON trials FOR EACH ROW EXECUTE FUNCTION redheart_hold();
"""


RESTART = ("lost its connection during a call; the database answers again: this worker runs "
           "its command again to resume (restart 1 of 3)")


def _sql(cluster: Cluster, database: str, sql: str) -> str:
    return cluster.sql(sql, database)


def test_a_call_lost_mid_statement_restarts_the_worker_which_resumes_to_the_unbroken_result(
        cluster, unbroken, tmp_path):
    """The lost call on purpose, not by timing: while the worker sleeps in the first
    crossover trial, a trigger is made that holds every INSERT into the trials table inside
    the server, and the test ends each held connection there (as a server restart would,
    mid-statement) until Optuna's own retries of the trial's creation are used up. The
    worker waits until the database answers, runs its command again in the same process,
    takes over what its earlier incarnation left, and ends with the unbroken result."""
    url = _fresh_db(cluster)
    database = url.rsplit("/", 1)[1]
    trace = tmp_path.parent / f"{tmp_path.name}-trace.txt"
    # The worker sleeps inside the first crossover trial while the trigger is made.
    env = {**os.environ, "REDHEART_CRASH_TRACE": str(trace),
           "REDHEART_STALL_AT": f"crossover:trial:0#1={STALL_S}"}
    proc = subprocess.Popen(command(tmp_path, "--storage", url, "--storage-patience", "60"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        while "crossover:trial:0#1" not in (trace.read_text().split() if trace.exists() else []):
            assert proc.poll() is None, "".join(lines[-20:])
            time.sleep(0.05)
        _sql(cluster, database, _HOLD_INSERTS)
        # Optuna retries a trial's creation 5 times (RDBStorage._create_new_trial): each
        # attempt's INSERT is held and its connection ended, until the call is lost.
        ended, deadline = 0, time.monotonic() + 300
        while not any(RESTART in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"no restart after {ended} connections ended:\n" + "".join(lines[-20:])
            held = _sql(cluster, database, "SELECT pid FROM pg_stat_activity WHERE datname = "
                        "current_database() AND wait_event = 'PgSleep'")
            for pid in held.split():
                _sql(cluster, database, f"SELECT pg_terminate_backend({pid})")
                ended += 1
            time.sleep(0.05)
        _sql(cluster, database, "DROP TRIGGER redheart_hold ON trials")
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=60)
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.count(RESTART) == 1, stderr[-3000:]
    assert ended >= 5  # the sixth attempt ran after the restart, on its own connection
    assert _result(tmp_path) == unbroken
