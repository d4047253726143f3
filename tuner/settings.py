"""What a study was run with, so a rerun resumes it only with the same settings.

The first run writes ``settings.json`` into the session folder (and the same settings
into each Optuna study's user attrs, one readable attr per group: ``record_study_settings``):
the format version of the session layout and every
setting that shapes results, with the sha256 of the data file and of a ``--model``
factory's source. A rerun compares; a difference is refused with a diff, because
resuming would silently mix two experiments.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from storage import Session, json_safe, read_json
from storage.checkpoints import sha256_file

from .config import PipelineConfig, declared

logger = logging.getLogger(__name__)

# Bump when a session folder or study written before can no longer be read correctly.
# 2: trials claim grid points by number (no GridSampler), renamed strategy rules.
# 3: the crossover study searches a window per group (<group>:span) under --monitor.
# 4: the long run stops early (--patience); the n-gram tables train sparse; the ngram preset
#    reads words too.
FORMAT_VERSION = 4
SETTINGS_FILE = "settings.json"
SETTINGS_ATTR = "settings"

# Settings a rerun may change: they decide how much runs and what is shown, not results.
MAY_CHANGE = ("crossover_trials", "stop_after", "train.progress", "wait", "heartbeat_interval",
              "grace_period", "storage_patience", "activation_checkpointing", "gpu_memory_gib",
              "train.ema_device")
# Settings added since a session may have been recorded: absent from its record and at this
# value now is no difference. The value that session ran with, or, for rules of phase 3 that
# a resume recomputes from the long run's reports (nothing it decided is kept), the default.
_ADDED = {"train.optimizer": "adamw", "overfit.floor_rows": 3, "overfit.min_candidates": 2,
          "train.ema_half_life": 0.0}
# Of those, the ones whose new default would change what a resumed run trains: a session
# recorded without them runs on with the value it had (``as_recorded``).
_KEPT_AS_RECORDED = {"train.ema_half_life": 0.0}
# Settings recorded by earlier versions that no longer exist: not a difference.
_RETIRED = ("stale_after_s",)
# Flags that name the study rather than shape it (another value is another study).
_IDENTITY = ("study", "backup_dir", "storage")


class SettingsChanged(ValueError):
    """A rerun asked for other settings than the study was run with."""


class IncompatibleSession(ValueError):
    """A session folder written by a version of the tool this one cannot read."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(value) if isinstance(value, tuple) else value}


def _model_source(spec: str) -> str | None:
    """sha256 of the file that defines a ``package.module:factory`` model."""
    module = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.origin or not Path(found.origin).is_file():
        return None
    return sha256_file(Path(found.origin))


def fingerprint(cfg: PipelineConfig) -> dict[str, Any]:
    """Every setting that shapes results, flat ("train.lr": ...), plus content digests."""
    flat = _flatten(json_safe(asdict(cfg)))
    for key in (*_IDENTITY, *MAY_CHANGE):
        flat.pop(key, None)
    # Derived (the pruning rule) or set by the phase that runs (train.lr, train.epochs).
    for key in ("sweep.rule", "train.lr", "train.epochs"):
        flat.pop(key, None)
    if cfg.data is not None and Path(cfg.data).is_file():
        flat["data.sha256"] = sha256_file(Path(cfg.data))
    if cfg.model is not None:
        flat["model.source_sha256"] = _model_source(cfg.model)
    if cfg.groups_file is not None and Path(cfg.groups_file).is_file():
        flat["groups.sha256"] = sha256_file(Path(cfg.groups_file))
    return flat


def as_recorded(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with the settings of ``_KEPT_AS_RECORDED`` at the value an existing session
    ran with, where its record predates them and the run asks for the default (a value
    asked for on the command line is compared, and refused, as any other)."""
    path = Path(cfg.backup_dir) / cfg.study / SETTINGS_FILE
    if not path.is_file():
        return cfg
    try:
        recorded = read_json(path).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return cfg  # check_settings names what is wrong with it
    train = cfg.train
    defaults = type(train)()
    for key, old in _KEPT_AS_RECORDED.items():
        name = key.removeprefix("train.")
        if key not in recorded and getattr(train, name) == getattr(defaults, name):
            train = replace(train, **{name: old})
    return replace(cfg, train=train)


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per setting that differs: ``name: old -> new``. A setting added since the
    old run was recorded, left at None (its "as before" default) or at the value older runs
    had (``_ADDED``), is no difference."""
    lines = []
    for key in sorted((old.keys() | new.keys()) - set(_RETIRED)):
        if key not in old and new[key] in (None, [], {}):
            continue
        if key not in old and key in _ADDED and new.get(key) == _ADDED[key]:
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            lines.append(f"  {key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return lines


def _has_evidence(session: Session) -> bool:
    return any(p.is_file() for p in session.root.rglob("*.json"))


def _may_change_flags() -> list[str]:
    flags = {path: s.flags[0] for path, _, s in declared()}
    return [flags[k] for k in MAY_CHANGE if k in flags]


def check_settings(session: Session, cfg: PipelineConfig) -> dict[str, Any]:
    """Compare this run's settings with the session's; write them on its first run.

    Raises IncompatibleSession for a session of another format version (or one written
    before settings were recorded), SettingsChanged with a diff when a setting differs.
    """
    path = session.path(SETTINGS_FILE)
    new = {"format_version": FORMAT_VERSION, "settings": fingerprint(cfg)}
    if not path.exists():
        if _has_evidence(session):
            raise IncompatibleSession(
                f"{session.root}: this session was written by an older version of "
                f"redheart-tuner (no {SETTINGS_FILE}; this version writes format "
                f"{FORMAT_VERSION}) and cannot be resumed: start a new study with "
                "--study <new name> or another --backup-dir")
        session.write_json(SETTINGS_FILE, new)
        return new
    old = read_json(path)
    if old.get("format_version") != FORMAT_VERSION:
        raise IncompatibleSession(
            f"{path}: written by a version of redheart-tuner with session format "
            f"{old.get('format_version')!r}; this version reads format {FORMAT_VERSION} only: "
            "start a new study with --study <new name> or another --backup-dir")
    diff = settings_diff(old["settings"], new["settings"])
    if diff:
        raise SettingsChanged(
            f"study {cfg.study!r} in {session.root} was run with other settings, and a rerun "
            "resumes it only with the same ones:\n" + "\n".join(diff) + "\n"
            "Rerun with the old settings to resume, or start a new study with --study "
            "<new name> (or another --backup-dir). Settings a rerun may change: "
            f"{', '.join(_may_change_flags())}, --log-level, --debug.")
    return old


def _attr_group(key: str, groups: dict[str, str]) -> str:
    # Nested configs and digests by their section ("train.seed" -> train, "data.sha256" ->
    # data); top-level settings by their --help group.
    head, dot, _ = key.partition(".")
    if dot:
        return "model" if head == "groups" else head
    return groups.get(key, "study")


def record_study_settings(study: Any, settings: dict[str, Any]) -> None:
    """Record ``settings`` in a study's user attrs, one attr per group of settings
    (``settings.data``, ``settings.train``, ...) and ``settings.format_version``, so the
    dashboard shows them as short readable values rather than one long line."""
    groups = {path: s.group for path, _, s in declared() if "." not in path}
    parts: dict[str, dict[str, Any]] = {}
    for key, value in sorted(settings["settings"].items()):
        parts.setdefault(_attr_group(key, groups), {})[key] = value
    for group, values in parts.items():
        study.set_user_attr(f"{SETTINGS_ATTR}.{group}", values)
    # Last: a worker reading the record at the same moment sees it whole or not at all.
    study.set_user_attr(f"{SETTINGS_ATTR}.format_version", settings["format_version"])


def study_settings(study: Any) -> dict[str, Any] | None:
    """What ``record_study_settings`` recorded (or the single ``settings`` attr of studies
    recorded before it), as {"format_version", "settings"}; None when nothing is."""
    attrs = study.user_attrs
    prefix = f"{SETTINGS_ATTR}."
    if f"{prefix}format_version" in attrs:
        flat: dict[str, Any] = {}
        for key, value in attrs.items():
            if key.startswith(prefix) and key != f"{prefix}format_version":
                flat.update(value)
        return {"format_version": attrs[f"{prefix}format_version"], "settings": flat}
    return attrs.get(SETTINGS_ATTR)


def check_study_settings(study: Any, settings: dict[str, Any]) -> None:
    """The same check against what an Optuna study records (workers on other machines
    have their own session folders but share the study); records it on first use."""
    old = study_settings(study)
    if old is None:
        record_study_settings(study, settings)
        return
    if old.get("format_version") != settings["format_version"]:
        raise IncompatibleSession(
            f"study {study.study_name!r} was written with session format "
            f"{old.get('format_version')!r}; this version reads format {FORMAT_VERSION} only")
    diff = settings_diff(old["settings"], settings["settings"])
    if diff:
        raise SettingsChanged(f"study {study.study_name!r} was run with other settings:\n"
                              + "\n".join(diff) + "\nRerun with those settings, or start a "
                              "new study with --study <new name>.")


__all__ = ["FORMAT_VERSION", "MAY_CHANGE", "IncompatibleSession", "SettingsChanged",
           "as_recorded", "check_settings", "check_study_settings", "fingerprint", "record_study_settings",
           "settings_diff", "study_settings"]
