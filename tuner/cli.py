"""The command line, derived from the settings' one declaration (``model.setting``).

Every flag of ``run_study.py`` that sets a config field is built from that field: its
flag names, help, type and choices come from the field's ``Setting``, its default from the
dataclass, and a TOML ``--config`` takes the same names. Flags default to None, so a flag
left unset keeps the dataclass default (or the ``--smoke`` size)."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path
from typing import Any

from model.setting import GROUPS, Setting
from model.toml_file import read_toml

from .config import PipelineConfig, declared

# --smoke: every phase at toy size (applies where a flag was not given explicitly).
SMOKE: dict[str, Any] = {"preset": "ngram-tiny", "max_samples": 400, "sweep.epochs": 2,
                         "long_run.epochs": 4, "long_run.checkpoint_every": 2,
                         "crossover_trials": 4}


def _dest(path: str) -> str:
    return path.replace(".", "__")


def _default(f: Any) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _shown(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def default_text(path: str) -> str | None:
    """What --help says of a declared setting's default (None: it says nothing)."""
    f, s = next((f, s) for p, f, s in declared() if p == path)
    if s.default_text is not None:
        return s.default_text
    if s.switch is not None or _default(f) in (None, ()):
        return None
    return _shown(_default(f))


def _help(path: str, s: Setting) -> str:
    shown = default_text(path)
    return s.help if shown is None else f"{s.help} (default: {shown})"


def _flag_of(path: str) -> str:
    return next(s.flags[0] for p, _, s in declared() if p == path)


# Flags that are not settings of the run (how to read the settings, how to show the run):
# (flags, --help group, value shown, help).
OWN_FLAGS: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    (("--config",), "study", "CONFIG", "TOML file of settings (flag names); flags win"),
    (("--smoke",), "study", "", "toy-size run of every phase: " + " ".join(
        f"{_flag_of(k)} {v}" for k, v in SMOKE.items())),
    (("--log-level",), "output", "LOG_LEVEL", "DEBUG also shows Optuna's per-trial lines "
                                              "(default: INFO)"),
    (("--debug",), "output", "", "show tracebacks of input errors"),
)


def build_parser() -> argparse.ArgumentParser:
    """``run_study.py``'s parser: one flag per declared setting, plus --config, --smoke,
    --log-level and --debug."""
    p = argparse.ArgumentParser(
        prog="run_study.py",
        description="Run the Red Heart training strategy with Optuna: data quality, LR sweep, "
                    "long run with modular checkpoints, sweet spots and crossover. Rerun the "
                    "same command to resume.")
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    own = {flags[0]: (group, value, text) for flags, group, value, text in OWN_FLAGS}
    groups["study"].add_argument("--config", help=own["--config"][2])
    groups["study"].add_argument("--smoke", action="store_true", help=own["--smoke"][2])
    for path, _, s in declared():
        kw: dict[str, Any] = {"dest": _dest(path), "default": None, "help": _help(path, s)}
        if s.switch is not None:
            kw.update(action="store_const", const=s.switch)
        else:
            if s.repeat:
                kw["action"] = "append"
            if s.type is not None:
                kw["type"] = s.type
            if s.choices is not None:
                kw["choices"] = (*s.choices, *s.renamed_values)
            if s.metavar is not None or s.choices is None:
                kw["metavar"] = s.metavar or s.flags[0].removeprefix("--").replace("-", "_").upper()
        groups[s.group].add_argument(*s.flags, **kw)
    groups["output"].add_argument("--log-level", default="INFO", help=own["--log-level"][2])
    groups["output"].add_argument("--debug", action="store_true", help=own["--debug"][2])
    return p


def _toml_names() -> dict[str, str]:
    """TOML key -> parser dest: every flag name and older spelling (dashes or
    underscores), and the top-level field names older config files used."""
    own = [flags[0].removeprefix("--").replace("-", "_") for flags, *_ in OWN_FLAGS]
    names = {name: name for name in own}
    for path, _, s in declared():
        for flag in s.flags:
            names[flag.removeprefix("--").replace("-", "_")] = _dest(path)
        if "." not in path:
            names[path] = _dest(path)
    return names


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """TOML keys are flag names (dashes or underscores); they become the parser's defaults
    (a switch's key takes true to mean the flag is given). Each value is checked here as the
    parser checks a flag's text (its type, parser and choices), so a wrong one is refused with
    one line naming the file and the key: argparse does not check defaults."""
    data = read_toml(path, "the config file")
    names, settings = _toml_names(), {_dest(p): s for p, _, s in declared()}
    defaults = {}
    for key, value in data.items():
        dest = names.get(key.replace("-", "_"))
        if dest is None or dest == "config":
            raise ValueError(f"{path}: unknown setting {key!r}; expected a run_study.py flag name")
        defaults[dest] = _config_value(path, key, dest, settings.get(dest), value)
    parser.set_defaults(**defaults)


def _config_value(path: str, key: str, dest: str, s: Setting | None, value: Any) -> Any:
    """The parser default a TOML ``key = value`` stands for, or a ValueError naming both."""
    def refuse(expected: str, why: str = "") -> ValueError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return ValueError(f"{path}: setting {key!r}: expected {expected}, got {shown}"
                          + (f" ({why})" if why else ""))

    if s is None or s.switch is not None:  # --smoke, --debug and the switches: true or false
        if dest == "log_level":
            if not isinstance(value, str):
                raise refuse("a log level name like \"INFO\"")
            return value
        if not isinstance(value, bool):
            raise refuse("true or false")
        if s is None:
            return value
        if key.replace("-", "_") == dest:
            return s.switch if value == s.switch else None  # the field's own name: its value
        return s.switch if value else None  # a flag's name: true means the flag is given
    many = isinstance(value, list)
    if many and not (s.repeat or s.parse is not None):
        raise refuse("one value, not a list")
    if many and not value:
        raise refuse("a non-empty list")
    texts = [_scalar_text(v) for v in (value if many else [value])]
    if any(t is None for t in texts):
        raise refuse("a string or a number" + (" or a list of them" if s.parse else ""))
    if s.parse is not None and not s.repeat:
        texts = [",".join(texts)]
    for text in texts:
        try:
            parsed = (s.parse or s.type or str)(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise refuse(f"what {s.flags[0]} takes", str(e).splitlines()[0] if str(e) else "") from None
        if s.choices is not None and parsed not in (*s.choices, *s.renamed_values):
            raise refuse(f"one of {', '.join(map(str, s.choices))}")
    if s.parse is not None:
        return texts if s.repeat else texts[0]
    return value


def _scalar_text(value: Any) -> str | None:
    """The command-line text of a TOML scalar (None for a boolean, table, date or list)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _renamed(s: Setting, value: Any) -> Any:
    if isinstance(value, str) and value in s.renamed_values:
        new = s.renamed_values[value]
        warnings.warn(f"{s.flags[0]} {value} is deprecated: use {s.flags[0]} {new}",
                      FutureWarning, stacklevel=3)
        return new
    return value


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The config from the parsed flags: a flag left unset keeps the dataclass default (or
    the --smoke size)."""
    smoke = SMOKE if args.smoke else {}
    given: dict[str, Any] = {}
    for path, _, s in declared():
        value = getattr(args, _dest(path))
        value = value if value is not None else smoke.get(path)
        if value is None:
            continue
        if s.parse is not None:
            value = tuple(s.parse(v) for v in value) if s.repeat else s.parse(value)
        given[path] = _renamed(s, value)
    data = given.get("data")
    if data is not None and Path(data).is_dir():
        for path in ("val_ratio", "test_ratio"):
            if getattr(args, _dest(path)) is not None:
                raise ValueError(f"{_flag_of(path)}: the data folder {data} gives its own "
                                 "splits (train/validation/test files); drop the flag")
    return _build(PipelineConfig, given)


def _build(cls: type, given: dict[str, Any], prefix: str = "") -> Any:
    kw = {}
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if path in given:
            kw[f.name] = given[path]
        elif f.init and dataclasses.is_dataclass(f.default_factory) and any(
                k.startswith(f"{path}.") for k in given):
            kw[f.name] = _build(f.default_factory, given, f"{path}.")
    return cls(**kw)


__all__ = ["GROUPS", "OWN_FLAGS", "SMOKE", "apply_config_file", "build_parser", "config_from_args",
           "declared", "default_text"]
