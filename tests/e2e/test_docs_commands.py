"""Every fenced shell block of README.md and docs/**/*.md says on the line before it which test
runs it (``<!-- NAME: run by tests/PATH.py -->``) or why none does (``<!-- not run here:
REASON -->``), and the blocks marked as run by this file run here as written: a command may
only get its paths redirected to a temporary folder and --no-progress added."""

from __future__ import annotations

import csv
import html
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THIS = "tests/e2e/test_docs_commands.py"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"bash", "sh", "shell", "console", "zsh"}
RUN_BY = re.compile(r"<!-- (?:(?P<name>[\w-]+): )?run by (?P<test>tests/[\w/]+\.py) -->")
NOT_RUN = re.compile(r"<!-- not run here: \S.*\S -->")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    marker: str  # the line before the fence
    code: str

    @property
    def run_by(self) -> re.Match | None:
        return RUN_BY.fullmatch(self.marker.strip())



def _flags_of(parser) -> list[str]:
    """Every option a parser's --help lists (argparse has no public list of its options)."""
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", parser.format_help())))

def _blocks() -> list[Block]:
    """Every fenced block in a shell language, on every page."""
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        start, lang = None, ""
        for i, line in enumerate(lines):
            if start is None and line.startswith("```"):
                start, lang = i, line[3:].strip()
            elif start is not None and line.strip() == "```":
                if lang in SHELL:
                    found.append(Block(str(page.relative_to(ROOT)), start + 1,
                                       lines[start - 1] if start else "",
                                       "\n".join(lines[start + 1:i])))
                start = None
    return found


def _named(name: str) -> str:
    """The one command of the blocks marked ``name: run by`` this file (identical where a
    command is shown on several pages)."""
    codes = {b.code for b in _blocks() if b.run_by and b.run_by["name"] == name}
    assert len(codes) == 1, f"blocks marked {name!r}: {sorted(codes)}"
    return codes.pop()


def _argv(code: str, *extra: str, paths: dict[str, str] | None = None) -> list[str]:
    """A one-line command as argv: ``python`` / ``mkdocs`` through this interpreter, each path
    in ``paths`` (documented path -> temporary one) swapped, ``extra`` appended."""
    (line,) = code.splitlines()
    argv = [(paths or {}).get(word, word) for word in shlex.split(line)]
    program = {"python": [sys.executable], "mkdocs": [sys.executable, "-m", "mkdocs"]}[argv[0]]
    return [*program, *argv[1:], *extra]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{shlex.join(argv)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def test_every_bash_block_in_readme_and_docs_is_run_or_says_why_not():
    blocks = _blocks()
    assert sum(b.page == "README.md" for b in blocks) >= 3
    wrong = []
    for b in blocks:
        where = f"{b.page}:{b.line}"
        run_by = b.run_by
        if run_by is None:
            if not NOT_RUN.fullmatch(b.marker.strip()):
                wrong.append(f"{where}: no '<!-- NAME: run by tests/....py -->' or "
                             f"'<!-- not run here: REASON -->' on the line before the fence")
            continue
        test = ROOT / run_by["test"]
        if not test.is_file():
            wrong.append(f"{where}: {run_by['test']} does not exist")
            continue
        source = test.read_text(encoding="utf-8")
        # The test must find the block: by its marker's name, on this page (or on every page).
        if run_by["name"] and f'"{run_by["name"]}"' not in source:
            wrong.append(f"{where}: {run_by['test']} never names the marker {run_by['name']!r}")
        if run_by["test"] != THIS and b.page not in source:
            wrong.append(f"{where}: {run_by['test']} does not read {b.page}")
        if run_by["test"] == THIS and run_by["name"] not in RUNS_HERE:
            wrong.append(f"{where}: marked as run by {THIS}, which has no test for "
                         f"{run_by['name']!r} (one of {sorted(RUNS_HERE)})")
    assert not wrong, "\n".join(wrong)


# The blocks this file runs, by marker name; each one's test is below.
RUNS_HERE = {"help", "predict-help", "smoke", "predict", "mkdocs-build"}


def test_every_block_this_file_runs_is_still_in_the_docs():
    names = {b.run_by["name"] for b in _blocks() if b.run_by and b.run_by["test"] == THIS}
    assert names == RUNS_HERE


def test_the_help_commands_list_every_option_of_both_parsers():
    import run_study

    for name, parser in (("help", run_study.build_parser()),
                         ("predict-help", run_study.build_predict_parser())):
        out = _run(_argv(_named(name))).stdout
        assert out.startswith(f"usage: {parser.prog}")
        flags = _flags_of(parser)
        assert len(flags) > 5 and [f for f in flags if f not in out] == []


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """The quick-start smoke command, with its session folder under a temporary folder; the
    one end-to-end run this file makes (about 15 s on 2 cores)."""
    backup = tmp_path_factory.mktemp("docs") / "runs"
    _run(_argv(_named("smoke"), "--no-progress", "--backup-dir", str(backup)))
    return backup


def test_the_smoke_command_writes_every_file_the_documented_session_layout_names(smoke):
    """The layout blocks (README, Getting started) list ``runs/redheart...`` paths with the
    files in them: every folder and every literally named file is there after the run."""
    layouts = [b for page in PAGES
               for b in re.findall(r"```[a-z]*\n(runs/redheart.*?)```",
                                   page.read_text(encoding="utf-8"), re.S)]
    assert len(layouts) >= 2
    missing = []
    for layout in layouts:
        for row in layout.splitlines():
            path, _, files = row.partition(" ")
            where = smoke.parent / path
            if not where.exists():
                missing.append(path)
            files = re.sub(r"\([^)]*\)", "", files)  # "(+ ema.safetensors in the last)"
            # Literal names only: not "<group>.safetensors" or "lr_<lr>_metrics.json".
            for name in re.findall(r"(?<![\w.<>])[\w.]+\.(?:json|safetensors|md|db)\b", files):
                if "XXX" not in name and not (where / name).exists():
                    missing.append(f"{path}{name}")
    assert not missing, missing
    results = json.loads((smoke / "redheart" / "final_results.json").read_text())
    assert results["training_complete"] and results["test_table"]


def test_the_predict_command_labels_every_row_of_a_new_file(smoke, tmp_path):
    texts = ["(＾▽＾)", "so happy today", "a text, with a comma", "ʕ•ᴥ•ʔ"]
    with open(tmp_path / "new.csv", "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text"])
        out.writerows([t] for t in texts)
    predictions = tmp_path / "predictions.jsonl"
    _run(_argv(_named("predict"), "--no-progress", paths={
        "runs/redheart": str(smoke / "redheart"), "new.csv": str(tmp_path / "new.csv"),
        "predictions.jsonl": str(predictions)}))
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    assert [(r["row"], r["text"]) for r in rows] == list(enumerate(texts))
    summary = json.loads((smoke / "redheart" / "preprocessing" / "data_summary.json").read_text())
    for row in rows:
        for task in summary["tasks"]:
            got = row[task["name"]]
            if task["kind"] == "single":
                assert got["label"] in task["classes"]
                assert sum(got["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            elif task["kind"] == "multi":
                assert set(got["labels"]) <= set(task["classes"])


def test_the_docs_build_strictly_with_the_cli_and_api_pages_generated(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings")
    import run_study

    site = tmp_path / "site"
    _run(_argv(_named("mkdocs-build"), "--site-dir", str(site)))
    cli = (site / "cli.html").read_text(encoding="utf-8")
    for parser in (run_study.build_parser(), run_study.build_predict_parser()):
        flags = [f for f in _flags_of(parser) if f != "--help"]
        assert [f for f in flags if f not in cli] == []
    # Every setting's default as its one declaration gives it, on the CLI page and in the
    # settings tables of the phase pages.
    from tuner.cli import declared, default_text

    for path, _, _setting in declared():
        if default_text(path) is not None:
            assert f"(default: {html.escape(default_text(path), quote=False)})" in cli, path
    phase = (site / "phases" / "2-long-run.html").read_text(encoding="utf-8")
    assert 'href="../cli.html#patience"' in phase
    for package in ("model", "storage", "tuner"):
        page = (site / "api" / f"{package}.html").read_text(encoding="utf-8")
        # A name that is also a submodule (tuner.predict) is listed under its full path.
        ids = set(re.findall(rf'id="{package}\.(\w+)(?:\.\1)?"', page))
        assert [n for n in __import__(package).__all__ if n not in ids] == []
