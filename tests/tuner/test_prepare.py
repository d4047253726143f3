from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from model.training import TrainConfig
from storage import Session, load_file
from tuner.config import PipelineConfig
from tuner.prepare import prepare_data


def _dataset(tmp_path, rows):
    f = tmp_path / "data.jsonl"
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    return load_file(f)


def _rows():
    rows = [{"text": f"{word} number {i:03d} {word[::-1]}", "label": word}
            for i in range(60) for word in ("alpha", "bravo", "charlie")]
    rows += [{"text": "alpha number 001 ahpla!", "label": "bravo"}]  # near-dup, other label
    return rows


def test_phase0_writes_its_evidence_and_reuses_it_on_a_rerun(tmp_path, caplog):
    dataset = _dataset(tmp_path, _rows())
    session = Session.create(tmp_path / "runs", "s")
    cfg = PipelineConfig(train=TrainConfig(progress=False))
    splits = prepare_data(dataset, cfg, session)
    dup = json.loads(session.path("preprocessing", "duplicate_removal_stats.json").read_text())
    split = json.loads(session.path("preprocessing", "split_stats.json").read_text())
    assert dup["original_count"] == 181 and dup["threshold_used"] == 0.92
    assert dup["conflicting_label_groups"] >= 1
    assert split["train_count"] == len(splits["train"]) and split["val_count"] == len(splits["val"])
    assert "ks_val_vs_train" in split and split["leakage"]["val"]["removed"] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in session.path("preprocessing").iterdir()}

    with caplog.at_level(logging.INFO, logger="tuner.prepare"):
        again = prepare_data(dataset, cfg, session)
    assert "reusing the split" in caplog.text
    assert again == splits
    assert stamps == {p.name: p.stat().st_mtime_ns for p in session.path("preprocessing").iterdir()}

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tuner.prepare"):
        prepare_data(dataset, replace(cfg, dedup_threshold=0.99), session)
    assert "recomputing" in caplog.text
    dup = json.loads(session.path("preprocessing", "duplicate_removal_stats.json").read_text())
    assert dup["threshold_used"] == 0.99


def test_nothing_left_after_dedup_is_a_clear_error(tmp_path):
    dataset = _dataset(tmp_path, [{"text": "same", "label": i % 2} for i in range(10)])
    session = Session.create(tmp_path / "runs", "s")
    with pytest.raises(ValueError, match="1 rows are left after near-duplicate removal"):
        prepare_data(dataset, PipelineConfig(), session)
    assert not session.path("preprocessing", "phase0_state.json").exists()
