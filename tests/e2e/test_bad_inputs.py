"""The bad-input battery: every kind of broken or odd input a user can give run_study.py.

Each case runs the real command line (``run_study.main``) and checks the exit code, the
message, and that an existing session folder is left byte for byte as it was and its
storage holds the same studies and trials. Odd but usable inputs (a BOM, a 1 MB text,
control characters, a class with one row, --max-samples above the row count) are accepted
and said in the log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

import run_study
from storage.studies import create_storage
from tuner.settings import FORMAT_VERSION, fingerprint

ROWS = [{"text": f"{word} number {i}", "label": word}
        for i in range(30) for word in ("happy", "sad", "angry")]


def _json(rows) -> bytes:
    return json.dumps(rows, ensure_ascii=False).encode("utf-8")


def _jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode("utf-8")


def _csv(rows, delimiter: bytes = b",") -> bytes:
    lines = [b"text" + delimiter + b"label"]
    lines += [r["text"].encode("utf-8") + delimiter + r["label"].encode("utf-8") for r in rows]
    return b"\r\n".join(lines) + b"\r\n"


def _with(index: int, **change) -> list[dict]:
    rows = [dict(r) for r in ROWS]
    rows[index] = {k: v for k, v in {**rows[index], **change}.items() if v is not ...}
    return rows


# (id, file name, file bytes, extra flags, message)
REFUSED = [
    ("empty file", "d.json", b"", [], "d.json: the file is empty"),
    ("not JSON", "d.json", b"text,label\nhi,happy\n", [], "d.json: not valid JSON at line 1"),
    ("object not list", "d.json", b'{"text": "hi", "label": "happy"}', [],
     "expected a JSON list of objects at the top level"),
    ("broken JSONL line", "d.jsonl", _jsonl(ROWS[:2]) + b'\n{"text": "x", "label"\n' + _jsonl(ROWS[2:4]),
     [], "d.jsonl: row 2 (line 3): not valid JSON"),
    ("not UTF-8", "d.json", _json(ROWS).replace(b"happy number 0", b"happy \xff\xfe 0"), [],
     "not valid UTF-8 at byte"),
    ("row without text", "d.json", _json(_with(4, text=...)), [],
     "d.json: row 4: field 'text' is missing; expected the text"),
    ("blank text", "d.json", _json(_with(5, text="   \t")), [],
     "d.json: row 5: field 'text': the text is empty or blank"),
    ("null label", "d.json", _json(_with(6, label=None)), [], "d.json: row 6: field 'label'"),
    ("list label among single labels", "d.json", _json(_with(7, label=["happy", "sad"])), [],
     "d.json: row 7: field 'label'"),
    ("only one class", "d.json", _json([dict(r, label="happy") for r in ROWS]), [],
     "every row has the label 'happy'"),
    ("every row a duplicate", "d.json", _json([{"text": "same", "label": i % 2} for i in range(20)]),
     [], "1 rows are left after near-duplicate removal"),
    ("negative ratio", "d.json", _json(ROWS), ["--val-ratio", "-0.1"], "val_ratio must be in (0, 1)"),
    ("ratios too large", "d.json", _json(ROWS), ["--val-ratio", "0.5", "--test-ratio", "0.5"],
     "val_ratio + test_ratio must be < 1"),
    ("unknown preset", "d.json", _json(ROWS), ["--preset", "enormous"], "unknown preset 'enormous'"),
    ("unknown model factory", "d.json", _json(ROWS), ["--model", "examples.bag_of_bytes:nope"],
     "has no callable 'nope'"),
    ("storage that cannot be opened", "d.json", _json(ROWS),
     ["--storage", "mysql://admin:hunter2@127.0.0.1:1/db"], "cannot be opened"),
    ("ragged CSV row", "d.csv", _csv(ROWS).replace(b"sad number 1,sad", b"sad number 1,sad,x"),
     [], "d.csv: row 4 (line 6): 3 cells, expected 2 like the header (text, label)"),
    ("CSV without the label column", "d.csv", _csv(ROWS), ["--label-fields", "emotion"],
     "d.csv: the header has no column 'emotion'"),
    ("CSV empty label cell", "d.csv", _csv(_with(3, label="")), [],
     "d.csv: row 3 (line 5): column 'label' is empty; expected a label"),
    ("CSV regression cell not a number", "d.csv", _csv(_with(2, label="n/a")),
     ["--task-kind", "label=regression"],
     "d.csv: row 0 (line 2): column 'label': expected a number (regression), got 'happy'"),
    ("TSV not UTF-8", "d.tsv", _csv(ROWS, b"\t").replace(b"happy number 0", b"happy \xff 0"), [],
     "d.tsv: not valid UTF-8 at byte"),
    ("malformed --task-kind", "d.csv", _csv(ROWS), ["--task-kind", "label"],
     "--task-kind must look like FIELD=single|multi|regression"),
    ("not Parquet", "d.parquet", b"PAR1 not really", [], "d.parquet: not a valid Parquet file"),
]


@pytest.fixture()
def existing(tmp_path):
    """A backup dir holding a session and its storage from an earlier run."""
    backup = tmp_path / "runs"
    (backup / "s" / "preprocessing").mkdir(parents=True)
    (backup / "s" / "preprocessing" / "phase0_state.json").write_text('{"key": "abc"}\n')
    (backup / "s" / "final_results.json").write_text('{"training_complete": true}\n')
    storage = create_storage(f"sqlite:///{backup}/s.db")  # WAL, as a real run leaves it
    study = optuna.create_study(study_name="s-lr-sweep", storage=storage)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    return backup


def _snapshot(backup: Path) -> dict:
    """The session folder byte for byte, and what its storage holds."""
    files = {str(p.relative_to(backup)): p.read_bytes() for p in sorted((backup / "s").rglob("*"))
             if p.is_file()}
    studies = optuna.get_all_study_summaries(f"sqlite:///{backup}/s.db")
    trials = {s.study_name: [(t.state, t.values, t.params) for t in optuna.load_study(
        study_name=s.study_name, storage=f"sqlite:///{backup}/s.db").trials] for s in studies}
    return {"files": files, "trials": trials}


def _argv(backup: Path, data: Path, *extra: str, study: str = "s") -> list[str]:
    return ["--no-progress", "--data", str(data), "--backup-dir", str(backup), "--study", study,
            "--stop-after", "0", *extra]


def _main(backup: Path, data: Path, *extra: str, study: str = "s") -> int:
    return run_study.main(_argv(backup, data, *extra, study=study))


def _same_settings(backup: Path, argv: list[str]) -> None:
    """Give the existing session the settings ``argv`` runs with, as a rerun of the same
    command finds them: each case then meets its own error, not a settings mismatch."""
    try:
        cfg = run_study.config_from_args(run_study.build_parser().parse_args(argv))
    except ValueError:
        return  # refused while reading the flags, before any session is looked at
    # The run records the optimizer its memory plan resolved: "auto" is AdamW without a budget.
    cfg = replace(cfg, train=replace(cfg.train, optimizer="adamw"))
    (backup / "s" / "settings.json").write_text(json.dumps(
        {"format_version": FORMAT_VERSION, "settings": fingerprint(cfg)}))


@pytest.mark.parametrize("name, filename, content, extra, message", REFUSED,
                         ids=[c[0] for c in REFUSED])
def test_bad_input_exits_2_with_one_clear_line_and_touches_nothing(
        tmp_path, existing, capsys, name, filename, content, extra, message):
    data = tmp_path / filename
    data.write_bytes(content)
    _same_settings(existing, _argv(existing, data, *extra))
    before = _snapshot(existing)
    assert _main(existing, data, *extra) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and "hunter2" not in err
    assert _snapshot(existing) == before


def test_a_backup_dir_that_cannot_be_written_exits_2(tmp_path, existing, capsys):
    data = tmp_path / "d.json"
    data.write_bytes(_json(ROWS))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    before = _snapshot(existing)
    assert _main(blocker / "runs", data) == 2
    err = capsys.readouterr().err
    assert f"backup dir '{blocker / 'runs'}' cannot be written" in err and "Traceback" not in err
    assert _snapshot(existing) == before and blocker.read_text() == "not a folder"


# (id, file name, file bytes, extra flags, log message)
ACCEPTED = [
    ("UTF-8 BOM", "d.json", b"\xef\xbb\xbf" + _json(ROWS), [], "d.json: 90 of 90 rows"),
    ("a class with one row", "d.json", _json([*ROWS, {"text": "a lonely feeling", "label": "lonely"}]),
     [], "stay in train only: 'lonely' (1 row)"),
    ("1 MB text", "d.json", _json(_with(3, text="joy " * 262_144)), [],
     "1 of 90 texts are longer than 511 bytes and are truncated (longest 1048576 bytes)"),
    ("control characters", "d.json", _json(_with(8, text="bell\x07 and nul\x00 here")), [],
     "1 rows hold control characters in field 'text' (first: row 8); kept as bytes"),
    ("max-samples above the row count", "d.json", _json(ROWS), ["--max-samples", "5000"],
     "has 90 rows, fewer than --max-samples 5000: using all of them"),
]


@pytest.mark.parametrize("name, filename, content, extra, message", ACCEPTED,
                         ids=[c[0] for c in ACCEPTED])
def test_odd_but_usable_input_is_accepted_and_said(tmp_path, existing, caplog, name, filename,
                                                   content, extra, message):
    data = tmp_path / filename
    data.write_bytes(content)
    before = _snapshot(existing)
    with caplog.at_level(logging.INFO):
        assert _main(existing, data, *extra, study="fresh") == 0
    assert message in caplog.text
    summary = json.loads((existing / "fresh" / "preprocessing" / "data_summary.json").read_text())
    assert summary["split"]["train"] > 0 and summary["split"]["val"] > 0
    assert _snapshot(existing) == before
