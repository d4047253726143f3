"""One declaration per setting: a dataclass field that carries its command-line flag and
help beside its default, so ``--help``, the docs' CLI page, a TOML ``--config`` and the
settings fingerprint all read the same place (``tuner.cli`` derives the parser)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

SETTING = "setting"  # the key of a field's metadata that holds its Setting


@dataclasses.dataclass(frozen=True)
class Setting:
    """How a config field appears on the command line.

    ``flags``: the flag and its older spellings (the first is the one shown); ``group``:
    the --help section; ``switch``: the value a flag without argument sets (``--no-wait``
    sets False); ``parse``: text -> value for values argparse cannot type (lists);
    ``repeat``: the flag may be given several times, each value parsed; ``default_text``:
    what the help says of the default where the field's own default is None or derived;
    ``renamed_values``: old value -> new value, accepted with a FutureWarning.
    """

    flags: tuple[str, ...]
    help: str
    group: str
    type: Callable[[str], Any] | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    switch: Any = None
    parse: Callable[[str], Any] | None = None
    repeat: bool = False
    default_text: str | None = None
    renamed_values: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.flags or not all(f.startswith("--") for f in self.flags):
            raise ValueError(f"flags must start with --, got {self.flags!r}")
        if self.group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {self.group!r}")


GROUPS = ("study", "data", "model", "training", "output")


def setting(default: Any = dataclasses.MISSING, *, flag: str, help: str, group: str,
            aliases: tuple[str, ...] = (), default_factory: Any = dataclasses.MISSING,
            **how: Any) -> Any:
    """A dataclass field with its default and its command-line declaration (``Setting``)."""
    meta = {SETTING: Setting((flag, *aliases), help, group, **how)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


__all__ = ["GROUPS", "SETTING", "Setting", "setting"]
