"""scripts/wheelhouse.py, the wheels for an air-gapped GPU node (docs/memory.md, "An air-gapped
GPU node"): its check on real wheel file names, its one-line refusals, and a wheelhouse built,
installed offline into a fresh virtual environment and run, with the commands the page shows."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = "docs/memory.md"
THIS = "tests/repo/test_wheelhouse.py"


def _load():
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["wheelhouse"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


wheelhouse = _load()

# The default target's wheelhouse (CPython 3.12, manylinux x86_64, extras: gpu) as the script
# built it from PyPI.
DEFAULT_SET = [
    "alembic-1.20.1-py3-none-any.whl",
    "bottle-0.13.4-py2.py3-none-any.whl",
    "cloudpickle-3.1.3-py3-none-any.whl",
    "colorlog-6.12.0-py3-none-any.whl",
    "contourpy-1.4.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "cycler-0.12.1-py3-none-any.whl",
    "fonttools-4.68.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    "joblib-1.6.0-py3-none-any.whl",
    "kaomoji_dataset-1.0.6-py3-none-any.whl",
    "kiwisolver-1.5.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    "mako-1.4.3-py3-none-any.whl",
    "markupsafe-3.0.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
    "matplotlib-3.11.2-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    "narwhals-2.29.0-py3-none-any.whl",
    "numpy-2.5.5-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "optuna-5.1.0-py3-none-any.whl",
    "optuna_dashboard-0.21.0-py3-none-any.whl",
    "packaging-26.4-py3-none-any.whl",
    "pillow-13.0.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "plotly-7.1.0-py3-none-any.whl",
    "psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.manylinux_2_28_x86_64.whl",
    "pyparsing-3.3.3-py3-none-any.whl",
    "python_dateutil-4.0.0-py3-none-any.whl",
    "pyyaml-6.0.4-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
    "rapidfuzz-3.14.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "redheart_tuner-0.1.0-py3-none-any.whl",
    "safetensors-0.8.0-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "scikit_learn-1.9.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "scipy-1.18.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "sqlalchemy-2.1.9-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
    "threadpoolctl-3.8.0-py3-none-any.whl",
    "torchao-0.18.0-cp310-abi3-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "tqdm-4.70.1-py3-none-any.whl",
    "typing_extensions-4.16.0-py3-none-any.whl",
    "tzdata-2026.6-py2.py3-none-any.whl",
    "requirements.txt",
    "manifest.json",
]
TORCH = "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl"
CUDNN = "nvidia_cudnn_cu13-9.24.0.43-py3-none-manylinux_2_27_x86_64.whl"
TRITON = "triton-3.6.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
CUDART = "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"


def _pyproject(folder: Path) -> Path:
    """A small pyproject.toml of the same shape as the repository's: torch, core, extras."""
    path = folder / "pyproject.toml"
    path.write_text('[project]\nname = "demo"\nversion = "1.0"\n'
                    'dependencies = ["torch>=2.6", "optuna>=4.0", "numpy>=2.5",\n'
                    '                "tzdata>=2020; python_version < \'3.9\'"]\n'
                    '[project.optional-dependencies]\n'
                    'gpu = ["torchao>=0.17"]\npostgres = ["psycopg[binary]>=3.1"]\n')
    return path


DEMO = ["demo-1.0-py3-none-any.whl", "optuna-5.1.0-py3-none-any.whl",
        "numpy-2.5.5-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "torchao-0.18.0-cp310-abi3-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"]


def test_the_default_wheelhouse_satisfies_pyproject():
    assert wheelhouse.check_wheelhouse(DEFAULT_SET) == []
    assert wheelhouse.check_wheelhouse(DEFAULT_SET, extras=()) == []  # extra wheels are fine


def test_a_missing_requirement_and_a_missing_project_wheel_are_named():
    problems = wheelhouse.check_wheelhouse(
        [f for f in DEFAULT_SET if not f.startswith(("optuna_dashboard-", "redheart_tuner-"))])
    assert problems == ["optuna-dashboard>=0.16: no wheel of optuna-dashboard",
                        "redheart-tuner==0.1.0: no wheel of redheart-tuner"]


def test_an_extra_without_its_wheel_is_named(tmp_path):
    pyproject = _pyproject(tmp_path)
    assert wheelhouse.check_wheelhouse(DEMO, pyproject, ("gpu",)) == []
    assert wheelhouse.check_wheelhouse(DEMO, pyproject, ("gpu", "postgres")) == [
        "psycopg[binary]>=3.1: no wheel of psycopg"]
    with pytest.raises(wheelhouse.WheelhouseError, match=r"unknown extra cuda \(pyproject.toml has: "
                                                         r"gpu, postgres\)"):
        wheelhouse.check_wheelhouse(DEMO, pyproject, ("cuda",))


def test_a_version_outside_the_specifier_is_named(tmp_path):
    old = "numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    files = [old if f.startswith("numpy-") else f for f in DEMO]
    assert wheelhouse.check_wheelhouse(files, _pyproject(tmp_path), ("gpu",)) == [
        "numpy>=2.5: numpy 1.26.4 does not satisfy >=2.5"]
    old_ao = "torchao-0.16.0-cp310-abi3-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
    files = [old_ao if f.startswith("torchao-") else f for f in DEMO]
    assert wheelhouse.check_wheelhouse(files, _pyproject(tmp_path), ("gpu",)) == [
        "torchao>=0.17: torchao 0.16.0 does not satisfy >=0.17"]


@pytest.mark.parametrize("wheel", [TORCH, CUDNN, TRITON, CUDART])
def test_torch_and_what_only_torch_needs_are_refused(wheel):
    problems = wheelhouse.check_wheelhouse([*DEFAULT_SET, wheel])
    assert len(problems) == 1
    assert problems[0].startswith(f"{wheel}: ") and "must not be in the wheelhouse" in problems[0]


def test_wheels_for_another_python_or_two_versions_of_one_project_are_refused():
    cp311 = "numpy-2.5.5-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
    files = [cp311 if f.startswith("numpy-") else f for f in DEFAULT_SET]
    assert wheelhouse.check_wheelhouse(files) == [
        f"{cp311}: not installable on CPython 3.12, manylinux_2_28_x86_64 and 26 older platform tags"]
    # The same wheel is right for a 3.11 node.
    node311 = wheelhouse.Target("3.11", wheelhouse.manylinux_platforms("2.28"))
    assert wheelhouse.check_wheelhouse([cp311], ROOT / "pyproject.toml", (), node311)[0].startswith(
        "optuna>=4.0: no wheel")
    assert not any(cp311 in p for p in wheelhouse.check_wheelhouse([cp311], target=node311))
    two = [*DEFAULT_SET, "tqdm-4.66.0-py3-none-any.whl"]
    assert wheelhouse.check_wheelhouse(two) == ["tqdm: several versions (4.66.0, 4.70.1)"]


def test_manylinux_tags_reach_down_to_the_oldest_glibc():
    tags = wheelhouse.manylinux_platforms("2.28", "x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags
    assert wheelhouse.manylinux_platforms("2.17", "aarch64")[-1] == "manylinux2014_aarch64"


@pytest.mark.parametrize(("torch", "torchao"), [
    ("2.11.0", ">=0.17,<0.19"), ("2.13.0+cpu", ">=0.17,<0.19"), ("2.10.0", "==0.16.0"),
    ("2.9.1", "==0.15.0"), ("2.9.0", "==0.14.1"), ("2.8.0", "==0.13.0"), ("2.6.0", "==0.12.0")])
def test_torchao_is_pinned_to_the_release_its_kernels_pair_with(torch, torchao):
    assert wheelhouse.torchao_pin(torch) == torchao


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "wheelhouse.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, out.stdout + out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith("wheelhouse: ")
    return line


@pytest.mark.parametrize(("args", "message"), [
    (["--extras", "gpu,cuda"], "unknown extra cuda"),
    (["--torch-version", "2.4.1"], "--torch-version 2.4.1 does not satisfy pyproject.toml's torch>=2.6"),
    (["--torchao", "0.17.0"], "--torchao '0.17.0': expected a specifier"),
    (["--glibc", "2"], "--glibc '2': expected 2.N"),
    (["--python-version", "12"], "--python-version '12': expected 3.N"),
])
def test_bad_flags_are_one_line_errors(args, message, tmp_path):
    assert message in _one_line_error(_script(*args, "--dest", str(tmp_path / "wh")))
    assert not (tmp_path / "wh").exists()


def test_a_folder_that_is_not_a_wheelhouse_is_never_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert "holds no manifest.json" in _one_line_error(_script("--dest", str(tmp_path)))
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert "no readable manifest.json" in _one_line_error(_script("--check", "--dest", str(tmp_path)))
    (tmp_path / "manifest.json").write_text('{"wheels": []}')
    assert "holds files its manifest.json does not list (notes.txt)" in _one_line_error(
        _script("--dest", str(tmp_path)))
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- against the registry ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_requirement_without_a_wheel_fails_in_one_line(tmp_path):
    """docopt is published as an sdist only."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "1.0"\ndependencies = ["torch>=2.6", "docopt"]\n')
    line = _one_line_error(_script("--pyproject", str(tmp_path / "pyproject.toml"), "--extras", "",
                                   "--dest", str(tmp_path / "wh")))
    assert line.startswith("wheelhouse: no wheel of docopt for CPython 3.12, manylinux_2_28_x86_64")
    assert not (tmp_path / "wh").exists()


@pytest.mark.slow
def test_a_resolved_set_with_an_nvidia_wheel_fails_in_one_line(tmp_path):
    """pynvml requires nvidia-ml-py (small); torch itself would be the same refusal, after
    resolving through a multi-GB wheel where the index serves no separate metadata."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "1.0"\ndependencies = ["torch>=2.6", "pynvml"]\n')
    line = _one_line_error(_script("--pyproject", str(tmp_path / "pyproject.toml"), "--extras", "",
                                   "--dest", str(tmp_path / "wh")))
    assert re.match(r"wheelhouse: the resolved set contains nvidia-ml-py \S+ \(required by pynvml\)",
                    line), line
    assert not (tmp_path / "wh").exists()


def _documented(name: str) -> list[str]:
    """The command lines of the block marked ``<!-- NAME: run by THIS -->`` on the page."""
    text = (ROOT / PAGE).read_text(encoding="utf-8")
    marker = re.escape(f"<!-- {name}: run by {THIS} -->")
    (block,) = re.findall(rf"^{marker}\n```bash\n(.*?)\n```$", text, re.M | re.S)
    return block.splitlines()


def _argv(line: str, python: str, paths: dict[str, str], extra: dict[str, list[str]]) -> list[str]:
    """A documented line as argv: ``python`` as ``python``, documented paths swapped, the
    arguments in ``extra`` appended after the script they follow."""
    words = [paths.get(w, w) for w in shlex.split(line)]
    assert words[0] == "python", line
    return [python, *words[1:], *extra.get(words[1], [])]


def _run(argv: list[str], env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, f"{shlex.join(argv)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_the_documented_build_makes_the_default_wheelhouse(tmp_path):
    """As on the page, for the node (CPython 3.12, manylinux x86_64, torch 2.11, extras gpu)."""
    wh = tmp_path / "wheelhouse"
    (build,) = _documented("wheelhouse-build")
    out = _run(_argv(build, sys.executable, {}, {"scripts/wheelhouse.py": ["--dest", str(wh)]}))
    (install,) = _documented("wheelhouse-install")
    assert install.replace(" wheelhouse ", f" {wh} ") in out.stdout
    manifest = json.loads((wh / "manifest.json").read_text())
    assert manifest["target"]["python_version"] == "3.12" and manifest["extras"] == ["gpu"]
    assert manifest["torch"] == {"version": "2.11.0", "torchao": "torchao>=0.17,<0.19",
                                 "runtime_deps_included": False}
    files = sorted(p.name for p in wh.iterdir())
    assert wheelhouse.check_wheelhouse(files) == []
    names = {w["name"] for w in manifest["wheels"]}
    assert {"optuna", "optuna-dashboard", "alembic", "colorlog", "mako", "sqlalchemy", "rapidfuzz",
            "kaomoji-dataset", "plotly", "bottle", "torchao", "redheart-tuner"} <= names
    assert not [n for n in names if wheelhouse.forbidden(n)]
    assert not names & {"sympy", "networkx", "filelock", "fsspec", "jinja2", "setuptools"}
    pinned = (wh / "requirements.txt").read_text().splitlines()
    assert pinned == [f"{w['name']}=={w['version']}" for w in manifest["wheels"]]
    assert [w["name"] for w in manifest["wheels"]] == sorted(names)
    assert len(pinned) == len(manifest["wheels"]) == len(files) - 2  # + requirements, manifest
    # Built again over itself (an earlier wheelhouse is replaced), then checked as on the node.
    _run(_argv(build, sys.executable, {}, {"scripts/wheelhouse.py": ["--dest", str(wh)]}))
    assert sorted(p.name for p in wh.iterdir()) == files
    check = _documented("wheelhouse-check")[0]
    _run(_argv(check, sys.executable, {}, {"scripts/wheelhouse.py": ["--dest", str(wh)]}))
    damaged = wh / files[0]
    damaged.write_bytes(damaged.read_bytes()[:-1])
    out = subprocess.run(_argv(check, sys.executable, {}, {"scripts/wheelhouse.py": ["--dest", str(wh)]}),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "sha256 differs from manifest.json" in _one_line_error(out)


def _torch_wheel(folder: Path) -> Path:
    """This environment's torch wheel, through the normal pip config (here: a local
    find-links folder); skipped where it cannot be had, except under CI=true."""
    version = importlib.metadata.version("torch")
    out = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                          "--dest", str(folder), f"torch=={version}"],
                         capture_output=True, text=True, timeout=600)
    found = sorted(folder.glob("torch-*.whl"))
    if out.returncode != 0 or len(found) != 1:
        reason = (f"cannot fetch the torch {version} wheel for the offline install: "
                  f"{(out.stderr.strip().splitlines() or ['no wheel'])[-1]}")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found[0]


def _offline_env(venv: Path) -> dict[str, str]:
    """The fresh venv first on PATH, and pip reading no configuration: no index, no find-links
    but the ones a command names."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1", "VIRTUAL_ENV": str(venv),
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}


@pytest.mark.slow
def test_a_wheelhouse_for_this_python_installs_offline_and_runs_the_smoke_study(tmp_path):
    """The page's commands on this machine: build for this Python and platform (with torch's
    runtime dependencies, as the fresh venv's torch comes without them), check, install with
    --no-index into a venv that has only torch, import everything, run the smoke study."""
    torch = _torch_wheel(tmp_path / "torch")
    libc, glibc = platform.libc_ver()
    if libc != "glibc":
        pytest.skip(f"the wheelhouse targets manylinux (glibc); this system has {libc or 'no libc'}")
    wh, venv, runs = tmp_path / "wheelhouse", tmp_path / "venv", tmp_path / "runs"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (build,) = _documented("wheelhouse-build")
    _run(_argv(build, sys.executable, {}, {"scripts/wheelhouse.py": [
        "--dest", str(wh), "--python-version", python, "--glibc", glibc, "--arch", platform.machine(),
        "--torch-version", importlib.metadata.version("torch"), "--torch-deps"]}))
    manifest = json.loads((wh / "manifest.json").read_text())
    target = wheelhouse.Target(python, tuple(manifest["target"]["platforms"]))
    assert wheelhouse.check_wheelhouse([p.name for p in wh.iterdir()], target=target) == []
    assert {"sympy", "networkx", "filelock", "fsspec", "jinja2", "setuptools"} <= {
        w["name"] for w in manifest["wheels"]}

    _run([sys.executable, "-m", "venv", str(venv)])
    vpython = str(venv / "bin" / "python")
    env = _offline_env(venv)
    config = _run([vpython, "-m", "pip", "config", "list"], env).stdout
    assert "find-links" not in config and "index-url" not in config, config
    _run([vpython, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", str(torch)], env)
    (install,) = _documented("wheelhouse-install")
    _run(_argv(install, vpython, {"wheelhouse": str(wh)}, {}), env)
    # Outside the checkout: the packages come from the installed wheel, not the working tree.
    out = _run([vpython, "-c", "import optuna, optuna_dashboard, rapidfuzz, sqlalchemy, torchao, "
                "model, tuner, storage, run_study; print(model.__file__)"], env, cwd=tmp_path)
    assert out.stdout.strip().startswith(str(venv))
    extra = {"scripts/wheelhouse.py": ["--dest", str(wh)], "run_study.py": ["--backup-dir", str(runs)]}
    for line in _documented("wheelhouse-check"):
        _run(_argv(line, vpython, {}, extra), env)
    results = json.loads((runs / "redheart" / "final_results.json").read_text())
    assert results["training_complete"]
