"""The dashboard as a user sees it: each study page rendered by headless Chromium shows
its metric name and its note (scripts/check_dashboard.py, on the shared smoke run)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _runs import STUDY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
def test_each_study_page_shows_its_metric_name_and_note(unbroken_smoke, tmp_path):
    backup = tmp_path / "copy"
    shutil.copytree(unbroken_smoke["backup"], backup)  # the shared run stays untouched
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_dashboard.py"),
                          "--backup-dir", str(backup), "--study", STUDY],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    for suffix in ("lr-sweep", "long-run", "crossover"):
        assert f"{STUDY}-{suffix}: " in out.stdout
        for page in ("", "-note"):
            assert (backup / STUDY / "dashboard" / f"{STUDY}-{suffix}{page}.png").stat().st_size > 10_000
