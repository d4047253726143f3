"""Nothing is ever unpickled, and the dashboard is never exposed beyond this machine."""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
from pathlib import Path

import pytest

from storage.checkpoints import CheckpointError, load_tensors, read_resume
from storage.studies import dashboard_command

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("model", "storage", "tuner", "bench", "examples") for p in (ROOT / d).rglob("*.py")]
SOURCES.append(ROOT / "run_study.py")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: ast.unparse(k.value) for k in node.keywords}


def test_no_source_file_unpickles_anything():
    offenders = []
    for path in SOURCES:
        for func, kwargs in _calls(ast.parse(path.read_text(), str(path))):
            if func.endswith("torch.load") and kwargs.get("weights_only") != "True":
                offenders.append(f"{path}: {func} without weights_only=True")
            if func in ("pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                offenders.append(f"{path}: {func}")
            if func.endswith("np.load") and kwargs.get("allow_pickle") == "True":
                offenders.append(f"{path}: {func}(allow_pickle=True)")
    assert len(SOURCES) > 20 and offenders == []


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_pickle_where_a_checkpoint_belongs_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "group_a_backbone_heads.safetensors"
    evil.write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(Exception, match=r"(?i)header|safetensor"):
        load_tensors(evil)
    assert not marker.exists()


def test_a_pickle_where_a_resume_state_belongs_is_refused_even_with_a_matching_sha256(tmp_path):
    """An attacker who can write the state can also write its meta: the sha256 matches, and
    the file is still refused because it is parsed as safetensors, never unpickled."""
    marker = tmp_path / "pwned"
    data = pickle.dumps(_Exploit(marker))
    (tmp_path / "state_epoch_003.safetensors").write_bytes(data)
    (tmp_path / "state_epoch_003.json").write_text(json.dumps({
        "epoch": 3, "file": "state_epoch_003.safetensors", "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_resume(tmp_path)
    assert not marker.exists()


def test_the_printed_and_documented_dashboard_command_binds_localhost():
    assert "--host 127.0.0.1" in dashboard_command("sqlite:///runs/x.db", "runs/x/artifacts")
    # The README and the documentation pages (docs/**/*.md) that took over its sections.
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    commands = [line for line in text.splitlines() if line.startswith("optuna-dashboard ")]
    assert len(commands) >= 2 and all("--host 127.0.0.1" in c for c in commands)
    assert "0.0.0.0" not in text
