from __future__ import annotations

import pytest
import torch

from model import PRESETS, ByteTokenizer, build_model
from model.training import evaluate
from storage import Session
from storage.checkpoints import save_checkpoint
from tuner.final import (
    Candidate,
    build_candidates,
    build_test_table,
    load_final_model,
    write_final_model,
)
from tuner.monitor import Monitor


def _rows(ds, a, b):
    return ds.encode(ds.records[a:b], ByteTokenizer(PRESETS["tiny"].max_length))


NAMES = ["best_single_checkpoint", "last_epoch", "ema", "sweet_spot_crossover",
         "optimized_crossover", "variant_ensemble", "uniform_soup", "greedy_soup"]


def _three_checkpoints(root, ds, val):
    """Checkpoints at epochs 2, 4, 6 of a tiny model drifting away from its init, and the
    history a long run would have reported for them (val measured for real)."""
    torch.manual_seed(0)
    model = build_model("tiny", ds.tasks)
    spec = model.group_spec
    history = []
    for epoch in (2, 4, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        v = evaluate(model, val, ds.tasks)
        history.append({"epoch": epoch, "val_loss": v["loss"], "val_acc": v["acc"]})
        ema = {k: t * 0.5 for k, t in model.state_dict().items()}
        save_checkpoint(root, epoch, model, spec, {}, ema_state=ema)
    return model, spec, history


def _table(tmp_path, embedded_small):
    ds, _ = embedded_small
    val, test = _rows(ds, 0, 300), _rows(ds, 300, 600)
    model, spec, history = _three_checkpoints(tmp_path / "ck", ds, val)
    sweet = {g: (2 if g.startswith("advanced") else 4) for g in spec.groups}
    candidates = build_candidates(tmp_path / "ck", spec, history, [2, 4, 6], 4, sweet,
                                  {g: 4 for g in spec.groups}, model, val, ds.tasks)
    table = build_test_table(model, candidates, val, test, ds.tasks)
    return ds, val, test, model, candidates, table


def test_the_table_has_every_candidate_in_order_with_val_and_test_metrics(tmp_path, embedded_small):
    _, _, _, _, _, table = _table(tmp_path, embedded_small)
    assert [r["candidate"] for r in table] == NAMES
    for r in table:
        assert r["val_loss"] > 0 and r["test_loss"] > 0
        assert 0 <= r["test_acc"] <= 1 and r["test_macro_f1"] is not None
        assert set(r["test_task_metrics"]) == {"emotion", "intent", "subject"}
    rows = {r["candidate"]: r for r in table}
    assert rows["variant_ensemble"]["single_model"] is False
    assert [v["offsets"] for v in rows["variant_ensemble"]["variants"]] == [[-4, -2], [0], [2, 4]]
    assert rows["uniform_soup"]["members"] == [2, 4, 6]
    assert rows["greedy_soup"]["soup"]["members"][0] == rows["greedy_soup"]["order"][0]
    # The same recipe gives the same numbers however it was named.
    assert rows["optimized_crossover"]["val_loss"] == rows["best_single_checkpoint"]["val_loss"]


def test_the_final_model_is_the_best_single_model_by_val_and_reloads_exactly(tmp_path, embedded_small):
    ds, val, test, _, candidates, table = _table(tmp_path, embedded_small)
    # Even if an ensemble had the best val accuracy, the final file is one model.
    table = [dict(r, val_acc=1.0) if r["candidate"] == "variant_ensemble" else r for r in table]
    session = Session.create(tmp_path, "s")
    recipe = write_final_model(session, table, candidates, Monitor("val_acc"), "emotion")
    best = min((r for r in table if r["single_model"]), key=lambda r: (-r["val_acc"], r["val_loss"]))
    assert recipe["monitor"] == "val_acc" and "val_acc" in recipe["chosen_on"]
    assert recipe["method"] == best["candidate"] != "variant_ensemble"
    torch.manual_seed(123)
    fresh = load_final_model(build_model("tiny", ds.tasks), session.root)
    assert evaluate(fresh, val, ds.tasks)["loss"] == recipe["val_loss"]
    assert evaluate(fresh, test, ds.tasks)["acc"] == recipe["test_acc"]
    assert not list(session.root.rglob("*.tmp"))


def test_an_empty_test_split_reports_val_only(tmp_path, embedded_small):
    ds, _ = embedded_small
    val = _rows(ds, 0, 200)
    model, spec, history = _three_checkpoints(tmp_path / "ck", ds, val)
    candidates = build_candidates(tmp_path / "ck", spec, history, [2, 4, 6], 6,
                                  {g: 6 for g in spec.groups}, {g: 6 for g in spec.groups},
                                  model, val, ds.tasks)
    table = build_test_table(model, candidates[:2], val, _rows(ds, 0, 0), ds.tasks)
    assert all(r["test_loss"] is None and r["test_acc"] is None for r in table)


def test_a_candidate_needs_exactly_one_way_to_make_its_weights():
    with pytest.raises(ValueError, match="exactly one of state or members"):
        Candidate("x", {})
    with pytest.raises(ValueError, match="exactly one of state or members"):
        Candidate("x", {}, state=dict, members=list)


def test_reference_rows_and_intervals_join_the_table_but_never_become_the_final_model(
        tmp_path, embedded_small):
    from tuner.baselines import majority_class

    ds, _ = embedded_small
    train, val, test = _rows(ds, 0, 300), _rows(ds, 300, 450), _rows(ds, 450, 600)
    model, spec, history = _three_checkpoints(tmp_path / "ck", ds, val)
    candidates = build_candidates(tmp_path / "ck", spec, history, [2, 4, 6], 4,
                                  {g: 4 for g in spec.groups}, {g: 4 for g in spec.groups},
                                  model, val, ds.tasks)
    # A "reference" that knows the test answers: it must still never be chosen.
    oracle = {k: {t: (d.targets[t].float() * 20 - 10 if t != "emotion"
                      else torch.nn.functional.one_hot(d.targets[t], 51).float() * 20)
                  for t in d.targets} for k, d in (("val", val), ("test", test))}
    majority = {k: majority_class(train.targets, ds.tasks, len(d)) for k, d in (("val", val),
                                                                                ("test", test))}
    table = build_test_table(model, candidates, val, test, ds.tasks,
                             references={"linear_baseline": ({"oracle": True}, oracle),
                                         "majority_class": ({}, majority)})
    rows = {r["candidate"]: r for r in table}
    assert [r["candidate"] for r in table][-2:] == ["linear_baseline", "majority_class"]
    assert rows["linear_baseline"]["reference"] and rows["linear_baseline"]["test_acc"] == 1.0
    assert rows["linear_baseline"]["val_loss"] < min(r["val_loss"] for r in table[:-2])
    recipe = write_final_model(Session.create(tmp_path, "s"), table, candidates)
    assert recipe["method"] in NAMES
    best = rows["best_single_checkpoint"]["test_ci"]
    assert best["acc_vs_best_single_checkpoint"]["diff"] == 0
    oracle_ci = rows["linear_baseline"]["test_ci"]
    assert oracle_ci["acc_vs_best_single_checkpoint"]["significant"]
    assert oracle_ci["acc"]["ci"] == [1.0, 1.0]
    assert best["acc_vs_linear_baseline"]["diff"] < 0  # every row also against the baseline
    assert rows["linear_baseline"]["verdict"].startswith("linear baseline: +")


def test_the_final_model_follows_the_monitor_with_val_loss_breaking_ties():
    from tuner.final import selection_key

    rows = [{"candidate": "early", "val_acc": 0.75, "val_loss": 1.10},
            {"candidate": "late", "val_acc": 0.76, "val_loss": 1.30},
            {"candidate": "late_calibrated", "val_acc": 0.76, "val_loss": 1.20}]
    by_acc = Monitor("val_acc")
    assert min(rows, key=lambda r: selection_key(r, by_acc, "emotion"))["candidate"] == "late_calibrated"
    # Switching the monitor switches the pick: the lowest val loss is the early checkpoint.
    assert min(rows, key=lambda r: selection_key(r, Monitor("val_loss"), "emotion"))["candidate"] == "early"
    # An accuracy the rows cannot give (a regression primary) is worst, never best.
    nan_rows = [{"candidate": "a", "val_acc": float("nan"), "val_loss": 2.0},
                {"candidate": "b", "val_acc": float("nan"), "val_loss": 1.0}]
    assert min(nan_rows, key=lambda r: selection_key(r, by_acc, "x"))["candidate"] == "b"


def test_the_greedy_soup_ranks_checkpoints_by_the_monitor(tmp_path, embedded_small):
    ds, _ = embedded_small
    val = _rows(ds, 0, 100)
    model, spec, history = _three_checkpoints(tmp_path / "ck", ds, val)
    # The monitors disagree: accuracy rises while the loss rises too.
    history = [h | {"val_loss": 1.0 + i, "val_acc": 0.5 + 0.1 * i} for i, h in enumerate(history)]
    orders = {}
    for monitor in ("val_loss", "val_acc"):
        cands = build_candidates(tmp_path / "ck", spec, history, [2, 4, 6], 2,
                                 {g: 2 for g in spec.groups}, {g: [4, 6] for g in spec.groups},
                                 model, val, ds.tasks, monitor=Monitor(monitor))
        rows = {c.name: c.how for c in cands}
        orders[monitor] = rows["greedy_soup"]["order"]
        assert rows["greedy_soup"]["soup"]["monitor"] == monitor
        # The variant ensemble moves the crossover's windows as a whole (+2 and +4 clamp to
        # the last checkpoint: the same recipe as 0).
        variants = rows["variant_ensemble"]["variants"]
        assert [v["recipe"]["group_b_neural"] for v in variants] == [[2], [2, 4], [4, 6]]
        assert variants[-1]["offsets"] == [0, 2, 4]
    assert orders == {"val_loss": [2, 4, 6], "val_acc": [6, 4, 2]}
