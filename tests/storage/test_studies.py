from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import optuna
import pytest

from storage.studies import create_storage, dashboard_command, default_storage_url, mask_url


def test_default_url_is_a_sqlite_file_in_the_backup_dir():
    assert default_storage_url("runs", "s") == "sqlite:///runs/s.db"


def test_passwords_never_appear_in_what_is_shown():
    url = "postgresql+psycopg://alice:s3cret@db.example:5432/optuna"
    assert "s3cret" not in mask_url(url)
    assert "s3cret" not in dashboard_command(url)
    assert "--host 127.0.0.1" in dashboard_command(url)


def test_sqlite_is_opened_in_wal_mode(tmp_path):
    create_storage(f"sqlite:///{tmp_path}/s.db")
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_a_journal_file_storage_holds_studies(tmp_path):
    storage = create_storage(f"journal:///{tmp_path}/j/study.log")
    study = optuna.create_study(study_name="x", storage=storage)
    study.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=3)
    again = optuna.load_study(study_name="x", storage=create_storage(f"journal:///{tmp_path}/j/study.log"))
    assert len(again.trials) == 3


def test_a_storage_that_cannot_be_opened_is_a_clear_error_without_the_password():
    with pytest.raises(ValueError, match="cannot be opened") as err:
        create_storage("postgresql+psycopg://bob:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="cannot be opened"):
        create_storage("nonsense-url")


_READER = textwrap.dedent("""
    import sys, time, optuna
    # Opened as optuna-dashboard opens it: a plain RDBStorage, no lock timeout of ours.
    storage = optuna.storages.RDBStorage(sys.argv[1])
    reads = errors = 0
    end = time.time() + float(sys.argv[2])
    while time.time() < end:
        try:
            for s in optuna.get_all_study_summaries(storage):
                optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)
            reads += 1
        except Exception as e:
            errors += 1
            print("ERR", type(e).__name__, e, file=sys.stderr)
    print(reads, errors)
""")


def test_sqlite_survives_a_reader_polling_from_another_process_during_writes(tmp_path):
    url = f"sqlite:///{tmp_path}/busy.db"
    storage = create_storage(url)
    study = optuna.create_study(study_name="busy", storage=storage)
    reader = subprocess.Popen([sys.executable, "-c", _READER, url, "8"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    for _ in range(60):  # many small writes while the reader reads
        trial = study.ask()
        for step in range(5):
            trial.report(float(step), step)
            trial.set_user_attr(f"m{step}", {"v": step})
        study.tell(trial, trial.suggest_float("x", 0, 1))
    out, err = reader.communicate(timeout=60)
    reads, errors = map(int, out.split())
    assert reads > 0 and errors == 0, err
    assert len(study.trials) == 60


_OPEN_AT = """
import sys, time
from storage.studies import create_storage
start = float(sys.argv[2])
while time.time() < start:
    pass
create_storage(sys.argv[1])
"""


def _open_together(url: str, workers: int) -> None:
    """``workers`` processes open ``url`` at the same instant (after their imports)."""
    root = Path(__file__).resolve().parents[2]
    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, url, start], cwd=root,
                              stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, errs


def test_two_processes_creating_the_same_new_sqlite_file_both_open_it(tmp_path):
    """Without the retry, about one start in three lost the table-creation race."""
    for i in range(4):
        _open_together(f"sqlite:///{tmp_path / f'n{i}.db'}", 2)


@pytest.mark.slow
def test_three_processes_creating_optunas_tables_in_a_new_postgresql_database_all_open_it(
        postgres_url):
    """Workers started together on an empty database: without the retry, two of three
    failed with an IntegrityError on Optuna's version row (seen in CI)."""
    import psycopg

    base, dsn = postgres_url.rsplit("/", 1)[0], postgres_url.replace("+psycopg", "")
    for _ in range(2):
        name = f"race{uuid.uuid4().hex[:10]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"create database {name}")
        try:
            _open_together(f"{base}/{name}", 3)
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"drop database {name} with (force)")


def test_an_unknown_storage_scheme_names_the_schemes_that_work():
    with pytest.raises(ValueError) as e:
        create_storage("foo://somewhere/x")
    assert "storage foo://somewhere/x: unknown scheme 'foo'" in str(e.value)
    assert "sqlite:///" in str(e.value) and "postgresql+psycopg://" in str(e.value)
    assert "journal:///" in str(e.value)
