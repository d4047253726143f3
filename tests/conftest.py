from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

from model import PRESETS, ByteTokenizer
from storage import load_embedded


@pytest.fixture(scope="session")
def embedded_small():
    """600 real embedded rows (seeded) and their tensors at the tiny preset's max_length."""
    ds = load_embedded(600, seed=0)
    return ds, ds.encode(ds.records, ByteTokenizer(PRESETS["tiny"].max_length))


@pytest.fixture(scope="session")
def unbroken_smoke(tmp_path_factory):
    """One uninterrupted `run_study.py --smoke --seed 3` run with its crash-point trace: the
    reference every crash and damage test compares against."""
    from _runs import finish, outcome

    backup = tmp_path_factory.mktemp("unbroken")
    trace = backup / "trace.txt"
    finish(backup, env={**os.environ, "REDHEART_CRASH_TRACE": str(trace)})
    return {"backup": backup, "outcome": outcome(backup),
            "trace": trace.read_text().split()}


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server's URL (``REDHEART_TEST_POSTGRES``; ``bash .ci/postgres``
    starts one and prints it). Without one the test is skipped with a warning, except
    under CI=true, where a missing server is a failure."""
    url = os.environ.get("REDHEART_TEST_POSTGRES")
    if not url:
        message = ("no PostgreSQL server for this test: export REDHEART_TEST_POSTGRES=$(bash "
                   ".ci/postgres) to start one")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return url


sys.path.insert(0, str(Path(__file__).parent))  # tests/_runs.py for the end-to-end tests
