"""--model hf:<folder>: small BERT-, RoBERTa- and DistilBERT-style models built from a config
with tokenizers trained on the embedded corpus, through the whole smoke pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _runs import MINIMAL, ROOT
from torch import nn

transformers = pytest.importorskip("transformers")

from _hf import build_model_folder  # noqa: E402 (after the importorskip)

from model import TaskSpec  # noqa: E402
from model.hf import HFModelError, derive_groups, find_layers  # noqa: E402
from model.plugin import build  # noqa: E402
from storage import load_embedded, read_json  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
TASK = (TaskSpec("emotion", "single", 51),)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: build_model_folder(kind, root / kind) for kind in ("bert", "roberta", "distilbert")}


def test_groups_come_from_the_architectures_own_names(folders):
    model, spec = build(f"hf:{folders['bert']}", "ngram", TASK, 64)
    assert list(spec.groups) == ["embeddings", "layers_00_00", "layers_01_01", "layers_02_02",
                                 "layers_03_03", "head"]
    assert spec.layers == tuple(f"hf.bert.encoder.layer.{i}." for i in range(4))
    assert spec.groups["head"] == ("hf.bert.pooler.dense.", "hf.classifier.")
    spec.partition(model)  # every tensor in exactly one group
    _, two = build(f"hf:{folders['bert']}", "ngram", TASK, 64, hf_layer_blocks=2)
    assert [g for g in two.groups if g.startswith("layers")] == ["layers_00_01", "layers_02_03"]
    _, distil = build(f"hf:{folders['distilbert']}", "ngram", TASK, 64)
    assert distil.layers[0] == "hf.distilbert.transformer.layer.0."
    assert distil.groups["head"] == ("hf.pre_classifier.", "hf.classifier.")


def test_a_model_without_a_layer_list_is_refused_with_what_to_do():
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

    with pytest.raises(HFModelError, match=r"no list of same-class layers found.*--groups"):
        find_layers(Flat())
    with pytest.raises(ValueError, match="got 0"):
        derive_groups(Flat(), 0)


def test_llrd_gives_lower_layers_smaller_learning_rates(folders):
    from model.techniques import llrd_param_groups

    model, spec = build(f"hf:{folders['roberta']}", "ngram", TASK, 64)
    groups = {g["name"]: g["lr"] for g in llrd_param_groups(model, spec, 1e-3, 0.9)}
    lrs = [groups[f"layer_{i}"] for i in range(4)]
    assert groups["below_layers"] < lrs[0] < lrs[1] < lrs[2] < lrs[3] < 1e-3


def _run(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    # The fewest settings that run every phase, with two checkpoints for the soups; under the
    # device guard (tests/_device_guard.py), so the hf: path and the splice make no tensor
    # off the run's device.
    return subprocess.run([sys.executable, str(ROOT / "tests" / "_guarded_run.py"), "--smoke",
                           "--no-progress",
                           "--backup-dir", str(tmp_path / "runs"), *MINIMAL, "--epochs", "4",
                           *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert"])
def test_the_smoke_pipeline_runs_on_a_local_hf_model(tmp_path, folders, kind):
    out = _run(tmp_path, "--model", f"hf:{folders[kind]}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "trains the primary task 'emotion' and ignores 'intent', 'subject'" in out.stderr
    assert "module groups: embeddings" in out.stderr
    session = tmp_path / "runs" / "redheart"
    groups = read_json(session / "model_groups.json")
    names = list(groups)
    assert (names[0], names[-1]) == ("embeddings", "head")
    plan = read_json(session / "memory_plan.json")  # no nn.TransformerEncoder: measured
    assert plan["activations_from"].startswith("measured per layer")
    assert plan["components_bytes"]["activations"] > 0
    assert any(".layer.0" in name for name in plan["activation_bytes_by_layer"])
    results = read_json(session / "final_results.json")
    assert set(results["sweet_spots"]) == set(groups)  # a sweet spot per group, from the val loss
    rows = {r["candidate"] for r in results["test_table"]}
    assert {"greedy_soup", "uniform_soup", "optimized_crossover", "linear_baseline"} <= rows
    if kind == "bert":
        _check_save_pretrained(session)


def _check_save_pretrained(session) -> None:
    """final/hf_model loads with from_pretrained and reproduces the final model's test row."""
    folder = session / "final" / "hf_model"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    records = load_embedded(400, 0).records  # --smoke: 400 rows, seed 0
    test = [records[i] for i in read_json(session / "preprocessing" / "phase0_state.json")[
        "splits"]["test"]]
    enc = tokenizer([r["text"] for r in test], padding=True, truncation=True, max_length=64,
                    return_tensors="pt")
    with torch.no_grad():
        labels = [model.config.id2label[int(i)] for i in model(**enc).logits.argmax(-1)]
    acc = sum(p == r["label"] for p, r in zip(labels, test, strict=True)) / len(test)
    recipe = read_json(session / "final" / "recipe.json")
    assert acc == pytest.approx(recipe["test_acc"])
    assert recipe["save_pretrained"] == str(folder)


def test_a_missing_or_non_model_folder_exits_2_with_one_line(tmp_path):
    out = _run(tmp_path, "--model", f"hf:{tmp_path / 'absent'}")
    assert out.returncode == 2 and "absent" in out.stderr and "no such folder" in out.stderr
    (tmp_path / "empty").mkdir()
    out = _run(tmp_path, "--model", f"hf:{tmp_path / 'empty'}")
    assert out.returncode == 2
    assert "holds no config.json; expected a folder that a transformers model's save_pretrained " \
           "wrote" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_predict_loads_an_hf_session_with_its_own_tokenizer(tmp_path, folders):
    out = _run(tmp_path, "--model", f"hf:{folders['distilbert']}", "--stop-after", "4")
    assert out.returncode == 0, out.stderr[-2000:]
    session = tmp_path / "runs" / "redheart"
    data = tmp_path / "t.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in ["(^_^)", "(T_T)"]),
                    encoding="utf-8")
    out = subprocess.run([sys.executable, str(ROOT / "run_study.py"), "predict", "--session",
                          str(session), "--data-path", str(data), "--output",
                          str(tmp_path / "p.jsonl"), "--no-progress"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [set(p) for p in preds] == [{"row", "text", "emotion"}] * 2
