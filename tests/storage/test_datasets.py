from __future__ import annotations

import json

import pytest
import torch

from model import EMBEDDED_TASKS, ByteTokenizer
from storage import DataError, embedded_fields, load_embedded, load_file


def test_embedded_corpus_is_the_66786_categorized_rows_in_51_categories():
    ds = load_embedded(max_samples=None)
    assert len(ds.records) == ds.total_rows == 66_786
    assert len({r["label"] for r in ds.records}) == 51
    assert "uncategorized" not in {r["label"] for r in ds.records}
    assert set(ds.records[0]) == {"text", "label", "intent", "subject"}


def test_embedded_tasks_match_the_models_constants():
    assert tuple(f.spec for f in embedded_fields()) == EMBEDDED_TASKS


def test_embedded_sample_is_seeded():
    a, b = load_embedded(10_000, seed=3), load_embedded(10_000, seed=3)
    c = load_embedded(10_000, seed=4)
    assert len(a.records) == 10_000
    assert a.records == b.records
    assert a.records != c.records


def test_a_sample_keeps_input_order(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 3}) for i in range(100)))
    picked = [int(r["text"][1:]) for r in load_file(f, max_samples=30, seed=1).records]
    assert len(picked) == 30 and picked == sorted(picked)


def test_max_samples_larger_than_the_data_uses_all_and_says_so(tmp_path, caplog):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]))
    ds = load_file(f, max_samples=100)
    assert len(ds.records) == 2
    assert "fewer than --max-samples 100: using all" in caplog.text


def test_json_list_in_the_seeds_shape_with_inferred_kinds(tmp_path):
    rows = [{"text": "좋아요", "label": "joy", "tags": ["a"], "score": 0.5, "level": 1},
            {"text": "싫어요", "label": "anger", "tags": ["a", "b"], "score": 2, "level": 3},
            {"text": "그래요", "label": "joy", "tags": [], "score": -1.5, "level": 1}]
    f = tmp_path / "claude_preprocessed_complete.json"
    f.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    ds = load_file(f, label_fields=("label", "tags", "score", "level"))
    kinds = {t.name: (t.kind, t.num_outputs) for t in ds.tasks}
    assert kinds == {"label": ("single", 2), "tags": ("multi", 2), "score": ("regression", 1),
                     "level": ("single", 2)}
    enc = ds.encode(ds.records, ByteTokenizer(32))
    assert enc.targets["label"].tolist() == [1, 0, 1]  # classes sorted: anger, joy
    assert enc.targets["tags"].tolist() == [[1, 0], [1, 1], [0, 0]]
    assert enc.targets["score"].dtype == torch.float32
    assert enc.targets["score"].flatten().tolist() == [0.5, 2.0, -1.5]


def test_jsonl_with_custom_field_names_and_a_bom(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [json.dumps({"body": f"text {i}", "emo": i % 2}) for i in range(4)]
    f.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n\n")
    ds = load_file(f, text_field="body", label_fields=("emo",))
    assert [r["body"] for r in ds.records] == [f"text {i}" for i in range(4)]
    assert ds.tasks[0].kind == "single"


def _write(tmp_path, name, content):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return f


@pytest.mark.parametrize("name, content, fields, expected", [
    ("bad.json", '[{"text": "a", "label": "x"},', ("label",), r"bad.json: not valid JSON at line 1"),
    ("obj.json", '{"text": "a", "label": "x"}', ("label",), "expected a JSON list of objects"),
    ("empty.json", "  \n", ("label",), "the file is empty"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": oops}\n', ("label",),
     r"bad.jsonl: row 1 \(line 2\): not valid JSON"),
    ("latin1.json", b'[{"text": "caf\xe9", "label": "x"}]', ("label",),
     "latin1.json: not valid UTF-8 at byte 14"),
    ("notext.json", '[{"text": "a", "label": "x"}, {"label": "y"}]', ("label",),
     "notext.json: row 1: field 'text' is missing"),
    ("blank.json", '[{"text": "a", "label": "x"}, {"text": "  ", "label": "y"}]', ("label",),
     "row 1: field 'text': the text is empty or blank"),
    ("nolabel.json", '[{"text": "a", "label": "x"}, {"text": "b"}]', ("label",),
     "row 1: field 'label' is missing"),
    ("nulllabel.json", '[{"text": "a", "label": "x"}, {"text": "b", "label": null}]', ("label",),
     "row 1: field 'label': expected a string, integer, number or list of labels, got null"),
    ("listlabel.json", '[{"text": "a", "label": "x"}, {"text": "b", "label": ["x"]}]',
     ("label",), r"row 1: field 'label': expected a string or integer label \(single-label\)"),
    ("mixed.json", '[{"text": "a", "label": "x"}, {"text": "b", "label": 3}]', ("label",),
     "row 1: field 'label': expected a string or integer label"),
    ("oneclass.json", '[{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]', ("label",),
     "every row has the label 'x'"),
    ("row.json", '[{"text": "a", "label": "x"}, "just a string"]', ("label",),
     "row 1: expected an object, got a string"),
])
def test_bad_files_name_the_file_row_and_field(tmp_path, name, content, fields, expected):
    f = _write(tmp_path, name, content)
    with pytest.raises(DataError, match=expected):
        load_file(f, label_fields=fields)


def test_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        load_file(tmp_path / "nope.json")


def test_a_damaged_corpus_cache_is_rebuilt(tmp_path, monkeypatch):
    import kaomoji_dataset

    from storage import corpus

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = corpus.cache_path(kaomoji_dataset.__version__)
    cache.parent.mkdir(parents=True)
    cache.write_text("{ not json")
    corpus.embedded_rows.cache_clear()
    try:
        rows = corpus.embedded_rows()
    finally:
        corpus.embedded_rows.cache_clear()
    assert len(rows) == 66_786
    assert len(json.loads(cache.read_text(encoding="utf-8"))) == 66_786
