"""Read a user's TOML file (``--config``, ``--groups``) with one-line errors naming it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The table of the TOML file at ``path``; ``what`` names it in errors ("the config
    file"). Every failure is a ``ValueError`` of one line that names the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (Windows editors) is accepted
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 at byte {e.start}: {what} must be UTF-8 "
                         "TOML") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid TOML for {what}: arrays or tables nest too "
                         "deeply") from None


__all__ = ["read_toml"]
