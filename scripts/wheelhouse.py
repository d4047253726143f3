#!/usr/bin/env python
"""Build a wheelhouse: every wheel redheart-tuner needs on a GPU node without a package registry.

The node already has Python and torch (a CUDA build) with torch's own runtime dependencies. This
script, run on a machine that reaches a registry, downloads binary wheels of everything else
the package needs for the node's Python and platform (pip download's target flags), builds the
project's own wheel, checks the set against pyproject.toml, and writes ``requirements.txt``
(names==versions) and ``manifest.json`` (the target, each wheel's size and sha256) beside them.

    python scripts/wheelhouse.py                  # CPython 3.12, manylinux x86_64, extras: gpu
    python scripts/wheelhouse.py --check          # a wheelhouse against its manifest and pyproject

Never in the wheelhouse: torch, and what only torch needs (nvidia-*, cuda-*, triton); the build
fails with one line if the resolved set contains any of them. torch's small pure-Python runtime
dependencies (filelock, sympy, networkx, jinja2, fsspec, setuptools...) are left out too: the
node has them with its torch; ``--torch-deps`` adds them, for an environment whose torch was
installed without its dependencies.

torchao's compiled kernels pair with torch releases, so the torchao version is pinned from
``--torch-version`` (the node's torch, 2.11.0 by default) with TORCHAO_FOR_TORCH; ``--torchao``
overrides the pin and ``--constraint`` passes any other pin to pip.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
MANIFEST = "manifest.json"
REQUIREMENTS = "requirements.txt"

# The node: CPython 3.12 with torch 2.11. torch 2.11's own Linux wheel is manylinux_2_28, so a
# node that runs it has glibc >= 2.28.
NODE_PYTHON = "3.12"
NODE_GLIBC = "2.28"
NODE_ARCH = "x86_64"
NODE_TORCH = "2.11.0"
DEFAULT_EXTRAS = "gpu"

# torch and what only torch needs: never in a wheelhouse (the node has them).
_FORBIDDEN = re.compile(r"torch|triton|pytorch-triton(-.+)?|nvidia-.+|cuda-.+")

# torchao release -> the torch its prebuilt kernels load with. Up to 0.16 each wheel's
# torchao/__init__.py loads its .so files only for the torch it was built against (the table in
# the 0.15.0 / 0.16.0 wheels; pytorch/ao issue #2919); from 0.17 the kernels use torch's stable
# ABI and the 0.17.0 and 0.18.0 wheels load them for any torch >= 2.11.0 (pytorch/ao PR #4154).
# First row whose torch is <= the node's wins. Widen "<0.19" once a newer wheel is checked.
TORCHAO_FOR_TORCH: tuple[tuple[str, str], ...] = (
    ("2.11", ">=0.17,<0.19"),
    ("2.10", "==0.16.0"),
    ("2.9.1", "==0.15.0"),
    ("2.9", "==0.14.1"),
    ("2.8", "==0.13.0"),
    ("2.5", "==0.12.0"),  # torch 2.5 - 2.7.1
)


class WheelhouseError(Exception):
    """A bad input or a failed step: main() prints it as one line and exits 1."""


@dataclass(frozen=True)
class Target:
    """The interpreter and platform the wheels are for (CPython only)."""

    python_version: str
    platforms: tuple[str, ...]

    @property
    def nodot(self) -> str:
        """``312`` for Python 3.12."""
        return "".join(self.python_version.split(".")[:2])

    @property
    def abis(self) -> tuple[str, ...]:
        """The ABIs a CPython of this version loads: its own, the stable ABI, and none."""
        return (f"cp{self.nodot}", "abi3", "none")

    def tags(self) -> frozenset[Tag]:
        """Every wheel tag pip accepts on this target."""
        version = tuple(int(p) for p in self.python_version.split(".")[:2])
        return frozenset([
            *cpython_tags(python_version=version, abis=[f"cp{self.nodot}"], platforms=self.platforms),
            *compatible_tags(python_version=version, interpreter=f"cp{self.nodot}",
                             platforms=self.platforms),
        ])

    def environment(self) -> dict[str, str]:
        """The PEP 508 marker environment of this target (Linux)."""
        machine = re.sub(r"^(manylinux_\d+_\d+|manylinux\d+|musllinux_\d+_\d+|linux)_", "",
                         self.platforms[0])
        return {"python_version": ".".join(self.python_version.split(".")[:2]),
                "python_full_version": _full_version(self.python_version),
                "implementation_name": "cpython", "implementation_version":
                _full_version(self.python_version), "platform_python_implementation": "CPython",
                "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux",
                "platform_machine": machine, "platform_release": "", "platform_version": "",
                "extra": ""}

    def pip_args(self) -> list[str]:
        """pip download / pip install flags that select this target's binary wheels only."""
        args = ["--only-binary=:all:", "--python-version", self.python_version,
                "--implementation", "cp"]
        for abi in self.abis:
            args += ["--abi", abi]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args

    def describe(self) -> str:
        """``CPython 3.12, manylinux_2_28_x86_64 and 26 older platform tags``."""
        more = f" and {len(self.platforms) - 1} older platform tags" if len(self.platforms) > 1 else ""
        return f"CPython {self.python_version}, {self.platforms[0]}{more}"


def _full_version(version: str) -> str:
    """``3.12`` -> ``3.12.0``."""
    parts = version.split(".")
    return ".".join([*parts, *["0"] * (3 - len(parts))][:3])


def manylinux_platforms(glibc: str = NODE_GLIBC, arch: str = NODE_ARCH) -> tuple[str, ...]:
    """Every manylinux tag a glibc ``glibc`` system accepts, newest first.

    pip does not widen a ``--platform`` to older glibc versions itself, so a wheel tagged
    manylinux_2_17 only matches a target that names that tag too.
    """
    match = re.fullmatch(r"2\.(\d+)", glibc)
    if not match or int(match[1]) < 5:
        raise WheelhouseError(f"--glibc {glibc!r}: expected 2.N with N >= 5 (e.g. 2.28)")
    if not re.fullmatch(r"[a-z0-9_]+", arch):
        raise WheelhouseError(f"--arch {arch!r}: expected a machine name such as x86_64 or aarch64")
    minor = int(match[1])
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014"} if arch != "x86_64" else {
        17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]
    return tuple(tags)


NODE = Target(NODE_PYTHON, manylinux_platforms())


def forbidden(name: str) -> bool:
    """torch, triton and the nvidia-* / cuda-* wheels: the node's torch brings them."""
    return bool(_FORBIDDEN.fullmatch(canonicalize_name(name)))


def parse_extras(text: str) -> tuple[str, ...]:
    """``"gpu, postgres"`` -> ``("gpu", "postgres")``; an empty text is no extra."""
    return tuple(e.strip() for e in text.split(",") if e.strip())


def read_pyproject(pyproject: Path) -> dict:
    """pyproject.toml's [project] table."""
    try:
        with open(pyproject, "rb") as f:
            return tomllib.load(f)["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        raise WheelhouseError(f"cannot read [project] from {pyproject}: {e}") from e


def requirements(pyproject: Path, extras: Sequence[str], target: Target = NODE) -> list[Requirement]:
    """The core dependencies and those of ``extras`` whose markers hold on ``target``, minus
    torch (and anything else only the node's torch brings)."""
    project = read_pyproject(pyproject)
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise WheelhouseError(f"unknown extra {', '.join(unknown)} ({pyproject.name} has: "
                              f"{', '.join(sorted(optional))})")
    texts = [*project.get("dependencies", []), *(d for e in extras for d in optional[e])]
    found = []
    for text in texts:
        try:
            req = Requirement(text)
        except InvalidRequirement as e:
            raise WheelhouseError(f"{pyproject.name}: bad requirement {text!r}: {e}") from e
        if forbidden(req.name) or (req.marker and not req.marker.evaluate(target.environment())):
            continue
        found.append(req)
    return found


def torch_requirement(pyproject: Path) -> Requirement | None:
    """pyproject's torch requirement (the node must satisfy it)."""
    for text in read_pyproject(pyproject).get("dependencies", []):
        req = Requirement(text)
        if canonicalize_name(req.name) == "torch":
            return req
    return None


def torchao_pin(torch_version: str) -> str:
    """The torchao specifier whose prebuilt kernels load with ``torch_version``."""
    try:
        release = Version(torch_version).release
    except InvalidVersion as e:
        raise WheelhouseError(f"--torch-version {torch_version!r} is not a version") from e
    for torch, spec in TORCHAO_FOR_TORCH:
        if release >= Version(torch).release:
            return spec
    raise WheelhouseError(f"torch {torch_version} is older than any torch a torchao release "
                          f"pairs with (torch >= {TORCHAO_FOR_TORCH[-1][0]})")


def check_wheelhouse(filenames: Iterable[str], pyproject: Path = PYPROJECT,
                     extras: Sequence[str] = (DEFAULT_EXTRAS,), target: Target = NODE) -> list[str]:
    """What is wrong with a wheelhouse holding ``filenames`` (an empty list: nothing).

    Every requirement of pyproject.toml (core and ``extras``, minus torch) needs a wheel whose
    version satisfies its specifier, and the project needs its own wheel at pyproject's
    version; no wheel may be torch, triton, nvidia-* or cuda-*, none may be for another target
    than ``target``, and no project may come in two versions. Files other than wheels are
    ignored. Only names are read: a requirement's extras (``psycopg[binary]``) are not followed.
    """
    problems: list[str] = []
    versions: dict[str, set[Version]] = {}
    accepted = target.tags()
    for filename in sorted(Path(f).name for f in filenames):
        if not filename.endswith(".whl"):
            continue
        try:
            name, version, _build, tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion) as e:
            problems.append(f"{filename}: not a wheel file name ({e})")
            continue
        if forbidden(name):
            problems.append(f"{filename}: {name} must not be in the wheelhouse (torch, triton, "
                            f"nvidia-* and cuda-* are the node's own)")
        if not tags & accepted:
            problems.append(f"{filename}: not installable on {target.describe()}")
        versions.setdefault(name, set()).add(version)
    for name, found in sorted(versions.items()):
        if len(found) > 1:
            problems.append(f"{name}: several versions ({', '.join(map(str, sorted(found)))})")
    project = read_pyproject(pyproject)
    wanted = [*requirements(pyproject, extras, target),
              Requirement(f"{project['name']}=={project['version']}")]
    for req in wanted:
        found = versions.get(canonicalize_name(req.name), set())
        if not found:
            problems.append(f"{req}: no wheel of {req.name}")
        elif not any(req.specifier.contains(v, prereleases=True) for v in found):
            problems.append(f"{req}: {req.name} {', '.join(map(str, sorted(found)))} does not "
                            f"satisfy {req.specifier}")
    return problems


def _pip(args: Sequence[str], step: str, target: Target) -> None:
    """Run ``python -m pip ARGS``; a failure becomes one WheelhouseError line."""
    out = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                         capture_output=True, text=True)
    if out.returncode == 0:
        return
    errors = [line.removeprefix("ERROR: ").strip() for line in out.stderr.splitlines()
              if line.startswith("ERROR: ")]
    for line in errors:
        missing = re.match(r"Could not find a version that satisfies the requirement (\S+)", line)
        if missing:
            raise WheelhouseError(f"no wheel of {missing[1]} for {target.describe()} "
                                  f"({step}: {line})")
    last = errors[0] if errors else (out.stderr.strip().splitlines() or ["no output"])[-1]
    raise WheelhouseError(f"{step} failed (pip exit {out.returncode}): {last}")


def _resolve(reqs: Sequence[str], target: Target, constraints: Sequence[Path], scratch: Path,
             *, deps: bool = True) -> list[dict]:
    """What pip would install for ``reqs`` on ``target``: the report's ``install`` items, from
    the wheels' metadata only (nothing is downloaded for that)."""
    report = scratch / f"report-{len(list(scratch.glob('report-*')))}.json"
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            *target.pip_args(), *(a for c in constraints for a in ("--constraint", str(c)))]
    _pip([*args, *([] if deps else ["--no-deps"]), *reqs], "resolving", target)
    return json.loads(report.read_text(encoding="utf-8"))["install"]


def torch_runtime_deps(torch_version: str, target: Target, scratch: Path) -> list[str]:
    """torch ``torch_version``'s own dependencies on ``target`` (from its wheel's metadata),
    without nvidia-*, cuda-* and triton."""
    (item,) = _resolve([f"torch=={torch_version}"], target, [], scratch, deps=False)
    found = []
    for text in item["metadata"].get("requires_dist", []):
        req = Requirement(text)
        if not forbidden(req.name) and (not req.marker or req.marker.evaluate(target.environment())):
            req.marker = None
            found.append(str(req))
    return found


def _refuse_forbidden(items: Sequence[dict]) -> None:
    """One line naming the torch / nvidia / triton wheel in a resolved set and who needs it."""
    names = {canonicalize_name(i["metadata"]["name"]): i for i in items}
    for name, item in names.items():
        if not forbidden(name):
            continue
        needed_by = sorted(
            other["metadata"]["name"] for other in items
            if any(canonicalize_name(Requirement(r).name) == name
                   for r in other["metadata"].get("requires_dist", [])))
        raise WheelhouseError(
            f"the resolved set contains {name} {item['metadata']['version']} (required by "
            f"{', '.join(needed_by) or 'the requirements'}): torch, triton, nvidia-* and cuda-* "
            f"wheels are the node's own (its torch install), never the wheelhouse's")


def _build_project_wheel(pyproject: Path, dest: Path, target: Target, scratch: Path) -> None:
    """The project's own wheel, built from a copy of its sources (the working tree keeps no
    build/ folder, and no stale file of an earlier build gets in)."""
    src_root = pyproject.parent
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project, setup = data["project"], data.get("tool", {}).get("setuptools", {})
    readme = project.get("readme")
    readme = readme.get("file") if isinstance(readme, dict) else readme
    names = [pyproject.name, *([readme] if readme else []),
             *(p.replace(".", "/") for p in setup.get("packages", [])),
             *(f"{m}.py" for m in setup.get("py-modules", [])),
             *(p.name for p in src_root.glob("LICENSE*"))]
    copy = scratch / "src"
    for name in names:
        source, there = src_root / name, copy / name
        there.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, there, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            shutil.copy2(source, there)
    _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(copy)],
         f"building the {project['name']} wheel", target)


def _sha256(path: Path) -> str:
    """A file's sha256, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def install_command(dest: str, project: str, extras: Sequence[str]) -> str:
    """The node's install command for a wheelhouse at ``dest``."""
    spec = f"{project}[{','.join(extras)}]" if extras else project
    return f"python -m pip install --no-index --find-links {shlex.quote(dest)} {shlex.quote(spec)}"


def _write_outputs(folder: Path, manifest: dict) -> None:
    """requirements.txt (every wheel, names==versions) and manifest.json with sha256s."""
    wheels = []
    for path in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        wheels.append({"file": path.name, "name": str(name), "version": str(version),
                       "size": path.stat().st_size, "sha256": _sha256(path)})
    manifest["wheels"] = wheels = sorted(wheels, key=lambda w: (w["name"], w["file"]))
    (folder / REQUIREMENTS).write_text(
        "".join(f"{w['name']}=={w['version']}\n" for w in wheels), encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _prepare_dest(dest: Path) -> None:
    """Refuse a destination that holds anything but an earlier wheelhouse's own files."""
    if dest.exists() and not dest.is_dir():
        raise WheelhouseError(f"{dest} exists and is not a folder")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    if not (dest / MANIFEST).is_file():
        raise WheelhouseError(f"{dest} is not empty and holds no {MANIFEST}: pick another --dest "
                              f"or empty it")
    try:
        ours = {w["file"] for w in json.loads((dest / MANIFEST).read_text(encoding="utf-8"))["wheels"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WheelhouseError(f"{dest}/{MANIFEST} is not readable ({e}): empty {dest} first") from e
    others = sorted(p.name for p in dest.iterdir() if p.name not in ours | {MANIFEST, REQUIREMENTS})
    if others:
        raise WheelhouseError(f"{dest} holds files its {MANIFEST} does not list ({', '.join(others)}):"
                              f" move them or pick another --dest")


def build(args: argparse.Namespace) -> Path:
    """Resolve, check, download and write the wheelhouse; returns its folder."""
    target = _target(args)
    extras = parse_extras(args.extras)
    pyproject = Path(args.pyproject)
    project = read_pyproject(pyproject)
    try:
        Version(args.torch_version)
    except InvalidVersion as e:
        raise WheelhouseError(f"--torch-version {args.torch_version!r} is not a version") from e
    missing = [c for c in args.constraint if not Path(c).is_file()]
    if missing:
        raise WheelhouseError(f"--constraint {missing[0]}: no such file")
    torch_req = torch_requirement(pyproject)
    if torch_req and not torch_req.specifier.contains(args.torch_version, prereleases=True):
        raise WheelhouseError(f"--torch-version {args.torch_version} does not satisfy "
                              f"{pyproject.name}'s {torch_req}")
    dest = Path(args.dest)
    _prepare_dest(dest)
    reqs = [str(r) for r in requirements(pyproject, extras, target)]
    torchao = args.torchao if args.torchao is not None else torchao_pin(args.torch_version)
    try:
        SpecifierSet(torchao)
    except ValueError as e:
        raise WheelhouseError(f"--torchao {torchao!r}: expected a specifier such as '==0.17.0'") from e
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
        scratch = Path(tmp)
        constraints = [Path(c) for c in args.constraint]
        if torchao:
            (scratch / "torchao.txt").write_text(f"torchao{torchao}\n", encoding="utf-8")
            constraints.append(scratch / "torchao.txt")
        if args.torch_deps:
            print(f"reading torch {args.torch_version}'s runtime dependencies")
            reqs += torch_runtime_deps(args.torch_version, target, scratch)
        print(f"resolving {len(reqs)} requirements for {target.describe()}")
        items = _resolve(reqs, target, constraints, scratch)
        _refuse_forbidden(items)
        pinned = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items)
        (scratch / "pinned.txt").write_text("\n".join(pinned) + "\n", encoding="utf-8")
        out = scratch / "wheelhouse"
        print(f"downloading {len(pinned)} wheels")
        _pip(["download", "--quiet", "--no-deps", "--dest", str(out), *target.pip_args(),
              "--requirement", str(scratch / "pinned.txt")], "downloading", target)
        print(f"building the {project['name']} wheel")
        _build_project_wheel(pyproject, out, target, scratch)
        problems = check_wheelhouse([p.name for p in out.iterdir()], pyproject, extras, target)
        if problems:
            raise WheelhouseError(f"check failed: {'; '.join(problems)}")
        _write_outputs(out, {
            "project": project["name"], "version": project["version"], "extras": list(extras),
            "target": {"python_version": target.python_version, "implementation": "cp",
                       "abis": list(target.abis), "platforms": list(target.platforms)},
            "torch": {"version": args.torch_version, "torchao": f"torchao{torchao}" if torchao else None,
                      "runtime_deps_included": args.torch_deps},
            "constraints": [Path(c).read_text(encoding="utf-8") for c in args.constraint],
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "install": install_command(args.dest, project["name"], extras)})
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), dest)
    return dest


def verify(dest: Path, pyproject: Path = PYPROJECT) -> dict:
    """Check a wheelhouse against its manifest (every wheel there, with its sha256, and no
    other) and against pyproject.toml for the manifest's target and extras."""
    try:
        manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
        target = Target(manifest["target"]["python_version"], tuple(manifest["target"]["platforms"]))
        listed = {w["file"]: w for w in manifest["wheels"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WheelhouseError(f"no readable {MANIFEST} in {dest}: {e}") from e
    present = {p.name for p in dest.glob("*.whl")}
    problems = [f"{f}: listed in {MANIFEST}, missing" for f in sorted(listed.keys() - present)]
    problems += [f"{f}: not listed in {MANIFEST}" for f in sorted(present - listed.keys())]
    for name in sorted(present & listed.keys()):
        if _sha256(dest / name) != listed[name]["sha256"]:
            problems.append(f"{name}: sha256 differs from {MANIFEST} (damaged copy?)")
    problems += check_wheelhouse(present, pyproject, manifest.get("extras", []), target)
    if problems:
        raise WheelhouseError(f"{dest}: {'; '.join(problems)}")
    return manifest


def _target(args: argparse.Namespace) -> Target:
    """The target from --python-version and --platform (or --glibc / --arch)."""
    if not re.fullmatch(r"3\.\d+", args.python_version):
        raise WheelhouseError(f"--python-version {args.python_version!r}: expected 3.N (e.g. 3.12)")
    platforms = tuple(args.platform) or manylinux_platforms(args.glibc, args.arch)
    return Target(args.python_version, platforms)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="wheelhouse.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dest", default="wheelhouse", help="the folder to write (replaced if it "
                   f"holds an earlier wheelhouse's {MANIFEST})")
    p.add_argument("--check", action="store_true", help="only check the wheelhouse at --dest "
                   f"against its {MANIFEST} and pyproject.toml")
    p.add_argument("--python-version", default=NODE_PYTHON, help="the node's Python (3.N)")
    p.add_argument("--platform", action="append", default=[], help="a platform tag the node "
                   "accepts (repeat it); default: every manylinux tag of --glibc and --arch")
    p.add_argument("--glibc", default=NODE_GLIBC, help="the node's glibc version, for the "
                   "default platform tags")
    p.add_argument("--arch", default=NODE_ARCH, help="the node's machine, for the default "
                   "platform tags")
    p.add_argument("--extras", default=DEFAULT_EXTRAS, help="comma list of pyproject extras "
                   "('' for none)")
    p.add_argument("--torch-version", default=NODE_TORCH, help="the node's torch: must satisfy "
                   "pyproject's torch requirement; picks the torchao pin")
    p.add_argument("--torchao", default=None, help="torchao specifier instead of the one "
                   "--torch-version picks, e.g. '==0.17.0' ('' for none)")
    p.add_argument("--torch-deps", action="store_true", help="also include torch's own runtime "
                   "dependencies (for a torch installed without them)")
    p.add_argument("--constraint", action="append", default=[], metavar="FILE",
                   help="a pip constraints file (repeat it)")
    p.add_argument("--pyproject", default=str(PYPROJECT), help="the project's pyproject.toml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or with --check, check) a wheelhouse; errors are one line and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        if args.check:
            manifest = verify(Path(args.dest), Path(args.pyproject))
            print(f"{args.dest}: {len(manifest['wheels'])} wheels match {MANIFEST} and "
                  f"{Path(args.pyproject).name} (extras: {','.join(manifest['extras']) or 'none'})")
            return 0
        dest = build(args)
    except WheelhouseError as e:
        print(f"wheelhouse: {e}", file=sys.stderr)
        return 1
    manifest = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
    size = sum(w["size"] for w in manifest["wheels"]) / 1e6
    torchao = [f"torchao {w['version']} ({manifest['torch']['torchao'] or 'unpinned'})"
               for w in manifest["wheels"] if w["name"] == "torchao"]
    print(f"{dest}: {len(manifest['wheels'])} wheels, {size:.1f} MB, for "
          f"{_target(args).describe()}; for torch {args.torch_version} (not included)"
          + "".join(f", {t}" for t in torchao))
    print(f"On the node, from this checkout (with {dest} copied along):\n    {manifest['install']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
