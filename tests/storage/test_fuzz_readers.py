"""Every reader of a user's file, fuzzed with Hypothesis (bench/fuzz_readers.py's strategies
and contract, fewer examples, a fixed sequence): each input is accepted as usable data or
refused with one ValueError line that names the file; never another exception."""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections import Counter, defaultdict

import pytest
from _runs import ROOT

pytest.importorskip("hypothesis")

_spec = importlib.util.spec_from_file_location("fuzz_readers", ROOT / "bench" / "fuzz_readers.py")
fuzz_readers = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_readers"] = fuzz_readers  # dataclasses look their module up there
_spec.loader.exec_module(fuzz_readers)


@pytest.mark.parametrize("reader", fuzz_readers.READERS)
def test_each_fuzzed_input_is_accepted_or_refused_with_one_line_naming_the_file(reader, caplog):
    caplog.set_level(logging.ERROR)
    tally: Counter = Counter()
    kinds: dict = defaultdict(Counter)
    fuzz_readers.run(reader, examples=120, seed=None, tally=tally, kinds=kinds)
    assert tally["accepted"] + tally["refused"] >= 100
    # The strategies reach both outcomes: valid files load, broken ones are refused.
    assert tally["accepted"] > 0 and tally["refused"] > 0, dict(tally)


def test_json_lines_end_at_newlines_only(tmp_path):
    """Found by the fuzzer: U+2028 and U+0085 inside a JSON string (unescaped, as
    ``ensure_ascii=False`` writes them) cut the line under str.splitlines."""
    from storage import load_file

    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a\u2028b\u0085c", "label": "x"}\r\n{"text": "d", "label": "y"}\n',
                    encoding="utf-8")
    dataset = load_file(path)
    assert [r["text"] for r in dataset.records] == ["a\u2028b\u0085c", "d"]


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("rows.json", b'[{"text": "t", "label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]",
     "nests lists or objects too deeply"),
    ("rows.jsonl", b'{"text": "t", "label": ' + b"9" * 5000 + b"}",
     "row 0 (line 1): not valid JSON for this reader: Exceeds the limit (4300 digits)"),
    ("rows.json", b'[{"text": "a \\ud800 b", "label": "x"}, {"text": "c", "label": "y"}]',
     "row 0: field 'text': holds a lone surrogate"),
    ("rows.json", b'[{"text": "a", "label": ["\\udc00"]}, {"text": "c", "label": ["y"]}]',
     "row 0: field 'label': holds a lone surrogate"),
    ("rows.json", b'[{"text": "a", "label": 1.5}, {"text": "c", "label": NaN}]',
     "row 1: field 'label': expected a finite number (regression), got nan"),
    ("rows.csv", b"text,label\na,1.5\nb,inf\n",
     "row 1 (line 3): field 'label': expected a finite number (regression), got inf"),
])
def test_the_fuzzers_finds_in_data_files_are_refused_with_one_line(tmp_path, name, data, expected):
    """Regressions of what the fuzzer found: a RecursionError, a bare ValueError without the
    file, rows that loaded but could not be encoded, NaN and infinite regression targets."""
    from storage import DataError, load_file

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        load_file(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("data", "expected"), [
    (b'"batch_size" = []\n', "setting 'batch_size': expected one value, not a list, got []"),
    (b'"lr_grid" = []\n', "setting 'lr_grid': expected a non-empty list, got []"),
    (b'"r_drop" = {}\n', "setting 'r_drop': expected a string or a number, got {}"),
    (b'"device" = {}\n', "setting 'device': expected a string or a number or a list of them"),
    (b'"batch_size" = 1.5\n', "setting 'batch_size': expected what --batch-size takes, got 1.5"),
    (b'"lr_grid" = "0.1,x"\n', "setting 'lr_grid': expected what --lr-grid takes, got '0.1,x'"),
    (b'"smoke" = "yes"\n', "setting 'smoke': expected true or false, got 'yes'"),
    (b'"optimizer" = "sgd"\n', "setting 'optimizer': expected one of auto, "),
    (b"\xff\xfe= 1\n", "not valid UTF-8 at byte 0: the config file must be UTF-8 TOML"),
    (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nest too deeply"),
])
def test_a_config_files_wrong_value_is_refused_naming_the_file_and_key(tmp_path, data, expected):
    """Found by the fuzzer: argparse does not check defaults, so a TOML value of the wrong
    type reached the settings (TypeError: '<' not supported between 'list' and 'int';
    AttributeError: 'dict' has no 'startswith') or was refused without the file's name."""
    from run_study import parse_config

    path = tmp_path / "config.toml"
    path.write_bytes(data)
    with pytest.raises(ValueError) as e:
        parse_config(["--config", str(path)])
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value), str(e.value)


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path):
    from run_study import parse_config

    path = tmp_path / "config.toml"
    path.write_bytes(b'\xef\xbb\xbfbatch_size = 16\nlr_grid = [0.01, 0.02]\n')
    cfg = parse_config(["--config", str(path)])
    assert cfg.train.batch_size == 16 and cfg.sweep.lr_grid == (0.01, 0.02)


@pytest.mark.parametrize(("data", "expected"), [
    (b"\xff\xfe", "not valid UTF-8 at byte 0: the groups file must be UTF-8 TOML"),
    (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nest too deeply"),
])
def test_a_groups_file_that_cannot_be_read_is_refused_naming_it(tmp_path, data, expected):
    from model import load_groups_file

    path = tmp_path / "groups.toml"
    path.write_bytes(data)
    with pytest.raises(ValueError) as e:
        load_groups_file(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value), str(e.value)
