"""The embedded corpus: the kaomoji-dataset package's categorized rows (CC-BY-4.0), with an
emotion task (single-label) and intent and subject tasks (multi-label)."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from .datasets import Dataset, TaskField, sample
from .session import atomic_write_bytes

logger = logging.getLogger(__name__)

EMBEDDED_SOURCE = "kaomoji-dataset"


def cache_path(version: str) -> Path:
    """Where the compact copy of kaomoji-dataset ``version``'s rows is cached."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "redheart-tuner" / f"kaomoji-dataset-{version}.json"


def _compact_rows() -> list[dict]:
    import kaomoji_dataset

    return [
        {"text": r["text"], "label": r["category"], "intent": list(r.get("intent") or ()),
         "subject": list(r.get("subject") or ())}
        for r in kaomoji_dataset.all()
        if r.get("category") and r["category"] != "uncategorized"
    ]


def write_cache(path: str | Path) -> None:
    """Parse the package's corpus and write the compact cache to ``path`` (what the child
    process ``embedded_rows`` starts runs)."""
    rows = _compact_rows()
    atomic_write_bytes(Path(path), json.dumps(rows, ensure_ascii=False).encode("utf-8"))


def _cache_in_child(cache: Path) -> None:
    # kaomoji_dataset keeps its full parse (~650 MB) for the life of the process that made
    # it, with no public way to drop it: a child process makes it and takes it along.
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    subprocess.run([sys.executable, "-c", "import sys; from storage.corpus import write_cache; "
                    "write_cache(sys.argv[1])", str(cache)], env=env, check=True,
                   capture_output=True, timeout=600)


@functools.lru_cache(maxsize=1)
def embedded_rows() -> tuple[dict, ...]:
    """The categorized rows, from a compact cache of the four fields we use.

    kaomoji_dataset.all() parses every field of all 82,109 entries (names and keywords
    in six languages: ~6 s and ~650 MB here); the cache holds what we need and loads in
    a fraction of that. It is keyed by the package version and rebuilt, in a child process
    that takes the full parse with it, when missing or unreadable; where no cache can be
    written, the rows are parsed here.
    """
    import kaomoji_dataset

    cache = cache_path(kaomoji_dataset.__version__)
    try:
        return tuple(json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass  # no cache yet (or a damaged one): build it below
    try:
        _cache_in_child(cache)
        return tuple(json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        logger.info("could not cache the embedded corpus at %s (%s): parsing it here",
                    cache, type(e).__name__)
        return tuple(_compact_rows())


def embedded_fields() -> tuple[TaskField, ...]:
    """Tasks of the embedded corpus; classes come from all its rows, not the sample."""
    rows = embedded_rows()
    return (
        TaskField("emotion", "label", "single", tuple(sorted({r["label"] for r in rows}))),
        TaskField("intent", "intent", "multi", tuple(sorted({x for r in rows for x in r["intent"]}))),
        TaskField("subject", "subject", "multi",
                  tuple(sorted({x for r in rows for x in r["subject"]}))),
    )


def load_embedded(max_samples: int | None = 10_000, seed: int = 0) -> Dataset:
    """The kaomoji-dataset rows with a category other than "uncategorized" (CC-BY-4.0)."""
    rows = [dict(r) for r in embedded_rows()]
    picked = sample(rows, max_samples, seed, EMBEDDED_SOURCE)
    logger.info("embedded corpus: %d of %d rows (seed %d)", len(picked), len(rows), seed)
    return Dataset(picked, embedded_fields(), EMBEDDED_SOURCE, "text", len(rows))


__all__ = ["EMBEDDED_SOURCE", "cache_path", "embedded_fields", "embedded_rows", "load_embedded",
           "write_cache"]
