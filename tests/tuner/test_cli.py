"""The command line is derived from the settings' one declaration: every declared field
has its flag, the flag sets that field, and the names older config files used still work."""

from __future__ import annotations

import dataclasses

import pytest

from tuner.cli import apply_config_file, build_parser, config_from_args, declared
from tuner.config import PipelineConfig


def _cfg(argv: list[str]) -> PipelineConfig:
    return config_from_args(build_parser().parse_args(argv))


def _get(cfg: object, path: str) -> object:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_declared_setting_has_its_flag_in_help_and_the_flag_sets_that_field():
    help_text = build_parser().format_help()
    paths = [path for path, _, _ in declared()]
    assert len(paths) == len(set(paths)) >= 45
    for path, f, s in declared():
        assert s.flags[0] in help_text, path
        if s.switch is not None:
            assert _get(_cfg([s.flags[0]]), path) == s.switch, path
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert _get(_cfg([]), path) == default, path


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
