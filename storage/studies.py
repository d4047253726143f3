"""Optuna storages: SQLite by default, any SQLAlchemy URL, or a journal file.

SQLite is opened in WAL mode with a lock timeout, so optuna-dashboard can read the
file while a run writes it (the known "database is locked" complaint). A database
server (PostgreSQL, MySQL) may go away for a while: its storage rides out an outage of
up to ``patience_s`` (``storage.outage``).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .outage import DEFAULT_PATIENCE_S, Outage, PatientRDBStorage, is_connection_error

logger = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:///"
SQLITE_TIMEOUT_S = 60.0


def default_storage_url(backup_dir: str | Path, study: str) -> str:
    return f"sqlite:///{Path(backup_dir) / study}.db"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for logs and reports."""
    if url.startswith(JOURNAL_PREFIX):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable storage URL>"


def _enable_wal(path: Path) -> None:
    """WAL lets readers (the dashboard) and one writer work at once; it persists in the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


_CREATE_ATTEMPTS = 6


def _rdb(url: str, engine_kwargs: dict, heartbeat_interval: int | None,
         grace_period: int | None, patience_s: float | None = None) -> RDBStorage:
    with warnings.catch_warnings():  # heartbeat_interval is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if patience_s is None:
            return RDBStorage(url, engine_kwargs=engine_kwargs,
                              heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        return PatientRDBStorage(url, Outage(mask_url(url), patience_s),
                                 engine_kwargs=engine_kwargs,
                                 heartbeat_interval=heartbeat_interval, grace_period=grace_period)


def _open_racing(url: str, database: str | None, engine_kwargs: dict,
                 heartbeat_interval: int | None, grace_period: int | None,
                 patience_s: float | None) -> RDBStorage:
    """Workers started together on a new database race to create Optuna's tables: the
    losers get "table already exists" or an IntegrityError on the version row (on
    PostgreSQL a duplicate key in ``pg_type`` too; on SQLite "database is locked") and
    wait a moment, then open what the winner created. A lost connection is not retried
    here: the outage patience (``PatientRDBStorage``) has waited for it already."""
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            if database and database != ":memory:" and url.startswith("sqlite"):
                _enable_wal(Path(database))
            return _rdb(url, engine_kwargs, heartbeat_interval, grace_period, patience_s)
        except Exception as e:
            retry = (("sqlalchemy" in type(e).__module__ or isinstance(e, sqlite3.OperationalError))
                     and not is_connection_error(e))
            if not retry or attempt == _CREATE_ATTEMPTS - 1:
                raise
            logger.info("storage %s: %s while opening it (another worker creating it?); retrying",
                        mask_url(url), type(e).__name__)
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
    raise AssertionError("unreachable")


# SQLAlchemy backends Optuna's RDBStorage supports, and how their URLs look.
_BACKENDS = ("sqlite", "postgresql", "mysql")
SCHEMES = ("sqlite:///path/to/file.db", "postgresql+psycopg://user:password@host/db",
           "mysql+pymysql://user:password@host/db", f"{JOURNAL_PREFIX}path/to/file.log")


def create_storage(url: str, heartbeat_interval: int | None = None,
                   grace_period: int | None = None,
                   patience_s: float | None = DEFAULT_PATIENCE_S) -> BaseStorage:
    """Open (creating if needed) the storage at ``url``.

    ``heartbeat_interval``/``grace_period`` (seconds) switch on Optuna's trial heartbeats
    for RDB storages (the journal file has none): ``study.optimize`` records one every
    interval, and a RUNNING trial without one for the grace period is failed by
    ``optuna.storages.fail_stale_trials``.

    ``sqlite:///path.db`` (WAL, 60 s lock timeout), ``postgresql+psycopg://...``, ``mysql+pymysql://...``
    (any SQLAlchemy URL), or ``journal:///path/to/file.log`` (Optuna's journal file).
    A database server's storage retries what fails for a lost connection for up to
    ``patience_s`` seconds (None: not at once). Raises ValueError naming the
    (password-masked) URL when it cannot be opened.
    """
    shown = mask_url(url)
    try:
        if url.startswith(JOURNAL_PREFIX):
            path = Path(url[len(JOURNAL_PREFIX):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        parsed = make_url(url)
        if parsed.get_backend_name() not in _BACKENDS:
            raise ValueError(f"storage {shown}: unknown scheme {parsed.drivername!r}; the "
                             f"storages that work: {', '.join(SCHEMES)}")
        engine_kwargs: dict = {}
        if parsed.get_backend_name() != "sqlite":
            engine_kwargs["pool_pre_ping"] = True
            # Bounded waits: a connect to a host that does not answer, or a connection a
            # network partition cut silently, fails within seconds instead of blocking past
            # the patience (libpq's and PyMySQL's own settings).
            engine_kwargs["connect_args"] = (
                {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
                 "keepalives_interval": 10, "keepalives_count": 3}
                if parsed.get_backend_name() == "postgresql" else {"connect_timeout": 10})
        else:
            engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
            patience_s = None  # a file has no server to wait for
        return _open_racing(url, parsed.database, engine_kwargs, heartbeat_interval,
                            grace_period, patience_s)
    except (ArgumentError, ImportError, OSError, sqlite3.Error, optuna.exceptions.StorageInternalError) as e:
        raise ValueError(f"storage {shown} cannot be opened: {type(e).__name__}: "
                         f"{mask_url(str(e)) if '://' in str(e) else e}") from None
    except Exception as e:  # SQLAlchemy connection errors arrive as many types
        if "sqlalchemy" in type(e).__module__:
            raise ValueError(f"storage {shown} cannot be opened: {type(e).__name__}") from None
        raise


def dashboard_command(url: str, artifact_dir: str | Path | None = None) -> str:
    """The optuna-dashboard command for this storage, bound to 127.0.0.1."""
    target = url[len(JOURNAL_PREFIX):] if url.startswith(JOURNAL_PREFIX) else mask_url(url)
    cmd = f"optuna-dashboard {target} --host 127.0.0.1 --port 8080"
    if artifact_dir is not None:
        cmd += f" --artifact-dir {artifact_dir}"
    return cmd


def name_metrics(study: optuna.Study, names: list[str]) -> None:
    """Name the study's objective(s) for the dashboard ("Objective 0" otherwise). Optuna
    marks ``set_metric_names`` experimental; the warning would reach every user's terminal."""
    if study.metric_names == names:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
