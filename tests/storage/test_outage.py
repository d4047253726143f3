"""The patience of a database storage, on real connection errors (a refused connection
to a port nothing listens on): what is retried, what is not, and when it gives up."""

from __future__ import annotations

import socket
import time

import pytest

from storage.outage import Outage, StorageUnavailable, is_connection_error

psycopg = pytest.importorskip("psycopg", reason="the postgres extra: pip install -e '.[postgres]'")


def _refused() -> Exception:
    """A real psycopg error: connecting to a local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        psycopg.connect(f"host=127.0.0.1 port={port} user=x dbname=x connect_timeout=2")
    except psycopg.OperationalError as e:
        return e
    raise AssertionError("a connection to a closed port succeeded")


def _failing(times: int, then):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= times:
            raise _refused()
        return then() if callable(then) else then
    return fn


def test_a_refused_connection_is_a_connection_error_and_a_bad_statement_is_not():
    assert is_connection_error(_refused())
    assert not is_connection_error(ValueError("bad value"))
    assert not is_connection_error(KeyError("no such study"))


def test_a_call_is_retried_through_a_short_outage_and_the_recovery_is_logged_once(caplog):
    outage = Outage("postgresql://x", patience_s=30)
    with caplog.at_level("WARNING", logger="storage.outage"):
        assert outage.call(_failing(2, "done")) == "done"
    lost = [r for r in caplog.records if "connection is lost" in r.getMessage()]
    back = [r for r in caplog.records if "is back after" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1


def test_past_the_patience_it_gives_up_and_every_later_call_fails_at_once():
    outage = Outage("postgresql://u:***@db/x", patience_s=0.4)
    with pytest.raises(StorageUnavailable, match=r"unreachable for more than 0.4 s"):
        outage.call(_failing(100, "never"))
    start = time.monotonic()
    with pytest.raises(StorageUnavailable):
        outage.call(lambda: "would work now")
    assert time.monotonic() - start < 0.1


def test_an_outage_ended_by_another_error_does_not_count_toward_the_next_one():
    outage = Outage("postgresql://x", patience_s=1.0)

    def then_missing():
        raise KeyError("no such study")  # the server answered: the outage is over
    with pytest.raises(KeyError):
        outage.call(_failing(1, then_missing))
    time.sleep(1.2)
    # A new blip much later is a new outage, well within the patience.
    assert outage.call(_failing(1, "done")) == "done"


def test_a_write_that_committed_before_the_drop_is_checked_not_repeated():
    outage = Outage("postgresql://x", patience_s=30)
    writes = []

    def write():
        writes.append(1)
        raise _refused()  # as if the reply was lost after the commit
    assert outage.call(write, check=lambda: (len(writes) > 0, "already there")) == "already there"
    assert writes == [1]
