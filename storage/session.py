"""The session folder ``<backup-dir>/<study>/`` and its atomic JSON / Markdown writes."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .faults import crash_point

logger = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)

SUBFOLDERS = ("preprocessing", "lr_sweep", "checkpoints", "analysis", "final")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it into place:
    a reader sees the old file or the new one, never half of one.

    The temp name carries this process' pid, so ``remove_stale_temp_files`` can tell a
    killed writer's leftovers from a live writer's file in progress.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            view = memoryview(data)  # halves without copying them
            half = len(view) // 2
            fh.write(view[:half])
            fh.flush()
            crash_point(f"write:{path.parent.name}/{path.name}")  # half a file on disk
            fh.write(view[half:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left on the disk of {path.parent} while writing "
                                   f"{path.name}: free some space (or choose another "
                                   "--backup-dir), then rerun the same command to resume") from None
        raise


_TMP_PID = re.compile(r"\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(root: Path) -> list[Path]:
    """Delete temp files under ``root`` left by writers that are no longer running."""
    removed = []
    for tmp in root.rglob(".*.tmp"):
        match = _TMP_PID.search(tmp.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        logger.warning("removed %d temp file(s) left by a killed writer: %s", len(removed),
                       ", ".join(str(p) for p in removed[:5]))
    return removed


def json_safe(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers (browsers, jq) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> Path:
    text = json.dumps(json_safe(payload), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def with_stable_timestamp(path: Path, payload: dict) -> dict:
    """``payload`` with a timestamp: the one already in ``path`` when a rerun reproduces
    the same content, so reruns leave the file (and its dashboard artifact) byte for byte
    as it was."""
    payload = json_safe({k: v for k, v in payload.items() if k != "timestamp"})
    if path.exists():
        old = read_json(path)
        if "timestamp" in old and {k: v for k, v in old.items() if k != "timestamp"} == payload:
            return payload | {"timestamp": old["timestamp"]}
    return payload | {"timestamp": datetime.now(UTC).isoformat()}


@dataclass(frozen=True)
class Session:
    """One study's evidence folder: preprocessing/, lr_sweep/, checkpoints/, analysis/, final/."""

    root: Path

    @classmethod
    def create(cls, backup_dir: str | Path, study: str) -> Session:
        if not study or "/" in study or "\\" in study or study in (".", ".."):
            raise ValueError(f"study name must be a plain folder name, got {study!r}")
        root = Path(backup_dir) / study
        try:
            for sub in SUBFOLDERS:
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"backup dir {str(backup_dir)!r} cannot be written: {e.strerror}") from None
        if not os.access(root, os.W_OK):
            raise ValueError(f"backup dir {str(backup_dir)!r} cannot be written")
        remove_stale_temp_files(root)
        return cls(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def write_json(self, relative: str, payload: Any) -> Path:
        return write_json(self.root / relative, payload)

    def write_text(self, relative: str, text: str) -> Path:
        path = self.root / relative
        atomic_write_bytes(path, text.encode("utf-8"))
        return path
