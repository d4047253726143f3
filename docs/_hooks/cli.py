"""MkDocs hook: the command-line reference and the settings tables, rendered at build time
from the settings' one declaration (``tuner.cli.declared``) and from run_study.py's parsers,
so no page can drift from ``run_study.py --help``.

Placeholders, each on a line of its own:

- ``<!-- cli: build_parser -->``: every flag of run_study.py by --help group, each with an
  anchor (``cli.md#epochs``), its value, its default and its help;
- ``<!-- cli: build_predict_parser -->``: ``run_study.py predict --help`` as printed;
- ``<!-- settings: --flag --flag ... -->``: a table of those flags (a phase page's settings).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLI = re.compile(r"^<!-- cli: (\w+) -->$", re.M)
SETTINGS = re.compile(r"^<!-- settings: ([-\w ]+) -->$", re.M)


def _modules():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import run_study
    from tuner import cli

    return run_study, cli


def _escape(text: str) -> str:
    """Markdown-safe: no HTML tags, no emphasis by stray asterisks or underscores."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([*_`\\|\[\]])", r"\\\1", text)


def _flags(cli) -> list[dict]:
    """One row per flag: the non-setting flags, then every declared setting."""
    rows = [{"flags": flags, "group": group, "value": value, "default": None, "help": text,
             "key": None} for flags, group, value, text in cli.OWN_FLAGS]
    for path, _, s in cli.declared():
        value = "" if s.switch is not None else (
            "{" + ",".join(str(c) for c in s.choices) + "}" if s.choices else
            (s.metavar or s.flags[0].removeprefix("--").replace("-", "_").upper()))
        rows.append({"flags": s.flags, "group": s.group, "value": value,
                     "default": cli.default_text(path), "help": s.help, "key": path})
    return rows


def _anchor(flag: str) -> str:
    return flag.removeprefix("--")


def render_parser(cli) -> str:
    from tuner.config import PipelineConfig
    from tuner.settings import fingerprint

    recorded = set(fingerprint(PipelineConfig()))
    rows = _flags(cli)
    lines = []
    for group in cli.GROUPS:
        lines += [f"### {group[0].upper()}{group[1:]}", ""]
        for row in (r for r in rows if r["group"] == group):
            flags = ", ".join(f"`{f} {row['value']}`" if row["value"] else f"`{f}`"
                              for f in row["flags"])
            lines.append(f"{flags} {{ #{_anchor(row['flags'][0])} }}")
            text = _escape(row["help"])
            if row["default"] is not None:
                text += f" (default: {_escape(row['default'])})"
            if row["key"] in recorded:  # what shapes results: a rerun must keep it
                text += f"; recorded as `{row['key']}` in settings.json"
            lines += [f":   {text}", ""]
    return "\n".join(lines)


def render_settings(cli, wanted: list[str], page: str) -> str:
    rows = {f: r for r in _flags(cli) for f in r["flags"]}
    missing = [f for f in wanted if f not in rows]
    if missing:
        raise ValueError(f"{page}: no such flag {missing}")
    lines = ["| flag | default | what it sets |", "|---|---|---|"]
    for flag in wanted:
        row = rows[flag]
        default = _escape(row["default"]) if row["default"] is not None else "off" if not row[
            "value"] else ""
        link = f"[`{flag}`](cli.md#{_anchor(row['flags'][0])})"
        lines.append(f"| {link} | {default} | {_escape(row['help'])} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if not (CLI.search(markdown) or SETTINGS.search(markdown)):
        return markdown
    run_study, cli = _modules()
    depth = page.file.src_uri.count("/")

    def parser(match: re.Match) -> str:
        if match.group(1) == "build_parser":
            return render_parser(cli)
        build = getattr(run_study, match.group(1), None)
        if not callable(build):
            raise ValueError(f"{page.file.src_path}: run_study has no parser {match.group(1)!r}")
        return f"```text\n{build().format_help().rstrip()}\n```"

    def settings(match: re.Match) -> str:
        table = render_settings(cli, match.group(1).split(), page.file.src_path)
        return table.replace("](cli.md#", f"]({'../' * depth}cli.md#")

    return SETTINGS.sub(settings, CLI.sub(parser, markdown))
