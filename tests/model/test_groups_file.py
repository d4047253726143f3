"""--groups FILE: module groups from a TOML file replace a model's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model import build_model
from model.groups import load_groups_file, with_groups

ROOT = Path(__file__).resolve().parents[2]


def test_a_groups_file_replaces_the_groups_and_keeps_the_layers(tmp_path):
    model = build_model("ngram")
    own = model.group_spec
    path = tmp_path / "g.toml"
    prefixes = [p for ps in own.groups.values() for p in ps]
    path.write_text(f"encoders = {prefixes[:-2]!r}\nrest = {prefixes[-2:]!r}\n".replace("'", '"'),
                    encoding="utf-8")
    spec = with_groups(own, load_groups_file(path))
    assert list(spec.groups) == ["encoders", "rest"]
    assert spec.layers == own.layers and set(spec.group_losses) <= {"encoders", "rest"}
    assert sum(len(v) for v in spec.partition(model).values()) == len(model.state_dict())


@pytest.mark.parametrize(("text", "message"), [
    ("", "no groups"),
    ("head = []", "group 'head': expected a non-empty list of parameter-name prefixes"),
    ("head = 'classifier.'", "group 'head': expected a non-empty list"),
    ("head = [", "not valid TOML"),
])
def test_a_bad_groups_file_names_the_file_and_group(tmp_path, text, message):
    path = tmp_path / "g.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_groups_file(path)


def test_groups_that_miss_a_parameter_exit_2_before_anything_is_written(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('only = ["encoder."]\n', encoding="utf-8")
    out = subprocess.run([sys.executable, str(ROOT / "run_study.py"), "--smoke", "--groups",
                          str(path), "--backup-dir", str(tmp_path / "runs")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"--groups {path}: parameter" in out.stderr and "exactly one group" in out.stderr
    assert not (tmp_path / "runs").exists()
