"""`run_study.py predict` and `tuner.predict`: a session's final model on a data file,
reproducing the test metrics the run reported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _runs import ROOT, STUDY

from storage import load_embedded, read_json
from tuner.predict import load_predictor, predict


def _test_rows(session) -> list[dict]:
    """The smoke run's test split (--smoke --seed 3: 400 rows of the embedded corpus)."""
    records = load_embedded(400, seed=3).records
    return [records[i] for i in read_json(session / "preprocessing" / "phase0_state.json")[
        "splits"]["test"]]


def _final_row(session) -> dict:
    results = read_json(session / "final_results.json")
    return next(r for r in results["test_table"]
                if r["candidate"] == results["crossover_recipe"]["method"])


def _micro_f1(pred: list[list], true: list[list]) -> float:
    tp = sum(len(set(p) & set(t)) for p, t in zip(pred, true, strict=True))
    fp = sum(len(set(p) - set(t)) for p, t in zip(pred, true, strict=True))
    fn = sum(len(set(t) - set(p)) for p, t in zip(pred, true, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


@pytest.mark.slow
def test_predict_on_the_test_split_reproduces_the_reported_test_metrics(tmp_path, unbroken_smoke):
    session = unbroken_smoke["backup"] / STUDY
    rows = _test_rows(session)
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    out = subprocess.run([sys.executable, str(ROOT / "run_study.py"), "predict", "--session",
                          str(session), "--data-path", str(data), "--output",
                          str(tmp_path / "p.jsonl"), "--device", "cpu", "--batch-size", "7"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "predict:" in out.stderr  # the progress bar
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [p["text"] for p in preds] == [r["text"] for r in rows]
    want = _final_row(session)["test_task_metrics"]
    acc = sum(p["emotion"]["label"] == r["label"] for p, r in zip(preds, rows, strict=True))
    assert acc / len(rows) == pytest.approx(want["emotion"]["accuracy"])
    for task in ("intent", "subject"):
        f1 = _micro_f1([p[task]["labels"] for p in preds], [r[task] for r in rows])
        assert f1 == pytest.approx(want[task]["micro_f1"]), task
    probs = preds[0]["emotion"]["probabilities"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert preds[0]["emotion"]["label"] == max(probs, key=probs.get)


@pytest.mark.slow
def test_the_python_function_gives_the_same_predictions_in_any_batch_size(unbroken_smoke):
    session = unbroken_smoke["backup"] / STUDY
    texts = [r["text"] for r in _test_rows(session)]
    predictor = load_predictor(session)
    one = predict(predictor, texts, batch_size=1, progress=False)
    many = predict(predictor, texts, batch_size=256, progress=False)
    assert [p["emotion"]["label"] for p in one] == [p["emotion"]["label"] for p in many]
    assert [p["intent"]["labels"] for p in one] == [p["intent"]["labels"] for p in many]


def test_predict_without_a_finished_session_exits_2_naming_what_is_missing(tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "hi"}\n', encoding="utf-8")
    out = subprocess.run([sys.executable, str(ROOT / "run_study.py"), "predict", "--session",
                          str(tmp_path / "nope"), "--data-path", str(data), "--output",
                          str(tmp_path / "p.jsonl")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "nope: no settings.json; expected the folder of a session" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "p.jsonl").exists()
