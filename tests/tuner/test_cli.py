"""The command line is derived from the settings' one declaration: every declared field
has its flag, the flag sets that field, and the names older config files used still work."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tuner.cli import apply_config_file, build_parser, config_from_args, declared
from tuner.config import PipelineConfig


def _cfg(argv: list[str]) -> PipelineConfig:
    return config_from_args(build_parser().parse_args(argv))


def _get(cfg: object, path: str) -> object:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


# A value other than the default for the settings a generic one would not fit.
_OTHER = {"monitor": "val_acc", "device": None, "sweep.lr_grid": "0.1,0.2",
          "label_fields": "a,b", "task_kinds": "a=multi", "grace_period": "200",
          "train.ema_decay": "0.99"}


def _other_value(path: str, f, s) -> str | None:
    """Text for the flag that gives the field a value other than its default."""
    if path in _OTHER:
        return _OTHER[path]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if s.choices is not None:
        return str(next(c for c in s.choices if c != default))
    if s.type is int:
        return str((default or 1) + 1)
    if s.type is float:
        return str(round(default * 0.9, 6) if default else 0.5)
    return f"{default}x" if default else "x.toml"


def test_every_declared_setting_has_its_flag_in_help_and_the_flag_sets_that_field():
    help_text = build_parser().format_help()
    paths = [path for path, _, _ in declared()]
    assert len(paths) == len(set(paths)) >= 45
    for path, f, s in declared():
        assert re.search(rf"(?<![\w-]){re.escape(s.flags[0])}(?![\w-])", help_text), path
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert _get(_cfg([]), path) == default, path  # unset: the dataclass default
        if s.switch is not None:
            assert _get(_cfg([s.flags[0]]), path) == s.switch, path
            continue
        text = _other_value(path, f, s)
        if text is None:
            continue  # --device: another value needs a GPU here
        value = _get(_cfg([s.flags[0], text]), path)
        assert value != default, (path, text)


@pytest.mark.parametrize(("argv", "path", "value"), [
    (["--study", "a"], "study", "a"),
    (["--study-name", "a"], "study", "a"),
    (["--data", "x.csv"], "data", "x.csv"),
    (["--grad-accum", "3"], "train.grad_accum", 3),
    (["--sweep-epochs", "2"], "sweep.epochs", 2),
    (["--lr-grid", "0.1, 0.2"], "sweep.lr_grid", (0.1, 0.2)),
    (["--label-fields", "a, b"], "label_fields", ("a", "b")),
    (["--task-kind", "a=multi", "--task-kind", "b=regression"], "task_kinds",
     (("a", "multi"), ("b", "regression"))),
    (["--no-wait"], "wait", False),
    (["--dense-embeddings"], "train.sparse_embeddings", False),
    (["--checkpoint-dtype", "bf16"], "long_run.checkpoint_dtype", "bf16"),
])
def test_a_flag_and_its_older_spellings_set_their_field(argv, path, value):
    assert _get(_cfg(argv), path) == value


def test_a_toml_file_takes_flag_names_and_the_names_older_files_used(tmp_path):
    config = tmp_path / "study.toml"
    config.write_text('study = "old"\ndata_path = "d.csv"\ngroups_file = "g.toml"\n'
                      'gradient_accumulation = 2\nsweep-epochs = 3\nno_wait = true\n'
                      'lr_grid = [0.001, 0.01]\noverfit_criterion = "pq"\n')
    parser = build_parser()
    apply_config_file(parser, str(config))
    cfg = config_from_args(parser.parse_args(["--sweep-epochs", "4"]))  # the flag wins
    assert (cfg.study, cfg.data, cfg.groups_file) == ("old", "d.csv", "g.toml")
    assert (cfg.train.grad_accum, cfg.sweep.epochs, cfg.wait) == (2, 4, False)
    assert cfg.sweep.lr_grid == (0.001, 0.01) and cfg.overfit.decide_by == "pq"


def test_an_unknown_toml_key_is_refused_naming_the_file_and_the_key(tmp_path):
    config = tmp_path / "study.toml"
    config.write_text("epoch = 3\n")
    with pytest.raises(ValueError, match=r"study\.toml: unknown setting 'epoch'"):
        apply_config_file(build_parser(), str(config))


def test_a_bad_list_value_names_its_flag():
    with pytest.raises(ValueError, match="--lr-grid must be comma-separated numbers"):
        _cfg(["--lr-grid", "1e-3,fast"])
    with pytest.raises(ValueError, match="--task-kind must look like FIELD="):
        _cfg(["--task-kind", "label"])


def test_a_switch_named_by_its_field_in_toml_takes_the_fields_value(tmp_path):
    # "wait = false" means what the field says (leave at once); "no_wait = true" is the flag.
    for text, wait in (("wait = false\n", False), ("wait = true\n", True),
                       ("no_wait = true\n", False), ("no-wait = false\n", True)):
        config = tmp_path / "study.toml"
        config.write_text(text)
        parser = build_parser()
        apply_config_file(parser, str(config))
        assert config_from_args(parser.parse_args([])).wait is wait, text
