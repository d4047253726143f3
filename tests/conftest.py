from __future__ import annotations

import pytest

from model import PRESETS, ByteTokenizer
from storage import load_embedded


@pytest.fixture(scope="session")
def embedded_small():
    """600 real embedded rows (seeded) and their tensors at the tiny preset's max_length."""
    ds = load_embedded(600, seed=0)
    return ds, ds.encode(ds.records, ByteTokenizer(PRESETS["tiny"].max_length))
