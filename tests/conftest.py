from __future__ import annotations

import pytest

from model import ByteTokenizer
from storage import load_embedded


@pytest.fixture(scope="session")
def embedded_small():
    """600 real embedded rows (seeded) and their tensors at max_length 64."""
    ds = load_embedded(600, seed=0)
    return ds, ds.encode(ds.records, ByteTokenizer(64))
