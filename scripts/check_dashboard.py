#!/usr/bin/env python
"""Look at a study's optuna-dashboard pages in a real headless browser.

Starts optuna-dashboard on the study's storage, opens each of its three study pages in
headless Chromium, waits for the page to render, and checks that the rendered DOM shows
the study's metric names (study page) and its note (note page). Saves a screenshot of
each page under ``<session>/dashboard/``. Exit status 0 when every page passes, 1 otherwise.

    python scripts/check_dashboard.py --backup-dir runs --study redheart

Needs Chromium (Debian: ``apt-get install chromium``) and a finished (or running) study.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.studies import default_storage_url  # noqa: E402
from tuner.dashboard import ARTIFACT_DIR  # noqa: E402

SUFFIXES = ("lr-sweep", "long-run", "crossover")
_RENDER_MS = 20_000  # virtual time Chromium gives the page's scripts before it dumps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _dashboard_exe() -> str:
    """optuna-dashboard of this interpreter's environment (activated or not)."""
    beside = Path(sys.executable).parent / "optuna-dashboard"
    return str(beside) if beside.is_file() else (shutil.which("optuna-dashboard") or "optuna-dashboard")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    raise SystemExit("check_dashboard: no Chromium found (Debian: apt-get install chromium)")


def _browse(browser: str, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--hide-scrollbars",
                           f"--virtual-time-budget={_RENDER_MS}", "--window-size=1440,2200",
                           *args, url], capture_output=True, text=True, timeout=180)


def _page_text(browser: str, url: str) -> str:
    """The rendered page's visible text (scripts run, styles and tags dropped)."""
    dom = html.unescape(_browse(browser, url, "--dump-dom").stdout)
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _note_heading(note: str) -> str:
    """The first heading (or line) of a note, as the rendered page shows it."""
    for line in note.splitlines():
        if line.strip():
            return line.lstrip("#").strip()
    return ""


def check(storage: str, study: str, out_dir: Path) -> list[str]:
    """Problems found on the study's pages (empty: all good); screenshots into out_dir."""
    browser = _chromium()
    port = _free_port()
    artifacts = out_dir.parent / ARTIFACT_DIR
    cmd = [_dashboard_exe(), storage, "--host", "127.0.0.1", "--port", str(port)]
    if artifacts.is_dir():
        cmd += ["--artifact-dir", str(artifacts)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    problems = []
    try:
        for _ in range(100):
            try:
                summaries = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                time.sleep(0.2)
        else:
            return [f"optuna-dashboard did not answer on {base}"]
        ids = {s["study_name"]: s["study_id"] for s in summaries}
        out_dir.mkdir(parents=True, exist_ok=True)
        for suffix in SUFFIXES:
            name = f"{study}-{suffix}"
            if name not in ids:
                problems.append(f"{name}: no such study in {storage}")
                continue
            detail = _get(f"{base}/api/studies/{ids[name]}?after=0")
            url = f"{base}/dashboard/studies/{ids[name]}"
            metrics = detail.get("objective_names") or []
            if not metrics:
                problems.append(f"{name}: the study has no metric names")
            text = _page_text(browser, url)
            problems += [f"{name}: metric name {m!r} is not on its page" for m in metrics
                         if m not in text]
            heading = _note_heading((detail.get("note") or {}).get("body", ""))
            if not heading:
                problems.append(f"{name}: the study has no note")
            elif heading not in _page_text(browser, f"{url}/note"):
                problems.append(f"{name}: its note ({heading!r}) is not on its note page")
            for page, suffix in ((url, ""), (f"{url}/note", "-note")):
                shot = out_dir / f"{name}{suffix}.png"
                _browse(browser, page, f"--screenshot={shot}")
                if not shot.is_file() or shot.stat().st_size < 10_000:
                    problems.append(f"{name}: no screenshot written to {shot}")
            print(f"{name}: {url} checked; metric names {metrics}, note {heading!r}; "
                  f"screenshots in {out_dir}", flush=True)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backup-dir", default="runs")
    p.add_argument("--study", default="redheart")
    p.add_argument("--storage", default=None, help="default: sqlite:///<backup-dir>/<study>.db")
    args = p.parse_args(argv)
    storage = args.storage or default_storage_url(args.backup_dir, args.study)
    problems = check(storage, args.study, Path(args.backup_dir) / args.study / "dashboard")
    for line in problems:
        print(f"FAIL {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
