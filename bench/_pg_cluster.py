"""A PostgreSQL cluster of its own (Debian's pg_createcluster, as root) for the outage tests
and benches: stopping it cannot disturb any other database on the machine."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROLE = "redheart"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, input=input)


def available() -> str | None:
    """Why no cluster can be made here, or None when one can."""
    if os.geteuid() != 0 or not Path("/usr/bin/pg_createcluster").exists():
        return "needs root and pg_createcluster (Debian's postgresql)"
    return None


class Cluster:
    """A cluster on its own port, with a role and database ``redheart``."""

    def __init__(self, version: str, name: str, port: int):
        self.version, self.name, self.port = version, name, port
        self.url = f"postgresql+psycopg://{ROLE}:{ROLE}@127.0.0.1:{port}/{ROLE}"

    def sql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser; its output, one row per line."""
        out = sh("su", "postgres", "-c", f"psql -p {self.port} -d {database} -qAt", input=sql)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def psql(self, sql: str) -> None:
        self.sql(sql)

    def fresh_db(self) -> str:
        """The URL of a new, empty database."""
        name = f"r{uuid.uuid4().hex[:8]}"
        self.sql(f"create database {name} owner {ROLE}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        out = sh("pg_ctlcluster", self.version, self.name, "stop", "-m", "fast")
        assert out.returncode == 0, out.stderr

    def start(self) -> None:
        out = sh("pg_ctlcluster", self.version, self.name, "start")
        assert out.returncode == 0, out.stderr


@contextmanager
def cluster(prefix: str = "outage") -> Iterator[Cluster]:
    version = sorted(os.listdir("/usr/lib/postgresql"), key=float)[-1]
    c = Cluster(version, f"{prefix}{uuid.uuid4().hex[:6]}", free_port())
    made = sh("pg_createcluster", "-p", str(c.port), version, c.name, "--start")
    assert made.returncode == 0, made.stderr
    try:
        c.psql(f"create role {ROLE} login password '{ROLE}' createdb")
        c.psql(f"create database {ROLE} owner {ROLE}")
        yield c
    finally:
        sh("pg_dropcluster", "--stop", version, c.name)
