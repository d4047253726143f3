from __future__ import annotations

import random

import numpy as np
import pytest
from rapidfuzz import fuzz

from storage import load_embedded
from tuner._similarity import similar_pairs
from tuner.data_quality import (
    ks_statistic,
    reference_remove_near_duplicates,
    remove_leakage,
    remove_near_duplicates,
    stratified_split,
)


def _rows(texts, labels=None):
    return [{"text": t, "label": (labels[i] if labels else "x")} for i, t in enumerate(texts)]


def _kept_indices(records, kept):
    position = {id(r): i for i, r in enumerate(records)}
    return [position[id(r)] for r in kept]


@pytest.fixture(scope="module")
def embedded_2000():
    return load_embedded(2000, seed=0).records


def test_kept_rows_equal_the_seeds_double_loop_on_2000_embedded_rows(embedded_2000):
    kept, stats = remove_near_duplicates(embedded_2000, progress=False)
    assert _kept_indices(embedded_2000, kept) == reference_remove_near_duplicates(embedded_2000)
    assert stats["removed_count"] > 0  # the real corpus has near-duplicates


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.97, 1.0])
def test_other_thresholds_also_equal_the_double_loop(embedded_2000, threshold):
    rows = embedded_2000[:600]
    kept, _ = remove_near_duplicates(rows, threshold, progress=False)
    assert _kept_indices(rows, kept) == reference_remove_near_duplicates(rows, threshold)


def test_a_pair_exactly_at_ratio_92_is_a_duplicate_and_just_below_is_not():
    base = "abcdefghijklmnopqrstuvwxy"                      # 25 characters
    at_92 = "abcdefghijklmnopqrstuvwXY"                     # 2 substitutions: 4 indels of 50
    below = "abcdefghijklmnopqrstuvWXY"                     # 3 substitutions: 88.0
    assert fuzz.ratio(base, at_92) == 92.0 and fuzz.ratio(base, below) == 88.0
    kept, _ = remove_near_duplicates(_rows([base, at_92]), progress=False)
    assert [r["text"] for r in kept] == [base]
    kept, _ = remove_near_duplicates(_rows([base, below]), progress=False)
    assert len(kept) == 2


def test_empty_and_one_character_texts_follow_rapidfuzz():
    rows = _rows(["", "", "a", "a", "b", ""])
    kept, _ = remove_near_duplicates(rows, progress=False)
    assert [r["text"] for r in kept] == ["", "a", "b"]
    assert _kept_indices(rows, kept) == reference_remove_near_duplicates(rows) == [0, 2, 4]


def test_a_removed_row_never_removes_others():
    # a~b and b~c but not a~c: the seed keeps a, removes b, and keeps c.
    a, b, c = "abcdefghijklmnopqrstuvwxy", "abcdefghijklmnopqrstuvwXY", "abcdefghijklmnopqrstuVWXY"
    assert fuzz.ratio(a, b) >= 92 and fuzz.ratio(b, c) >= 92 and fuzz.ratio(a, c) < 92
    kept, _ = remove_near_duplicates(_rows([a, b, c]), progress=False)
    assert [r["text"] for r in kept] == [a, c]


def test_korean_near_duplicates_are_found():
    texts = ["오늘 날씨가 정말 좋아서 기분이 좋아요", "오늘 날씨가 정말 좋아서 기분이 좋아요!",
             "내일은 비가 온다고 합니다"]
    kept, stats = remove_near_duplicates(_rows(texts), progress=False)
    assert [r["text"] for r in kept] == [texts[0], texts[2]]
    assert stats["duplicate_pairs_sample"][0]["index1"] == 0
    assert stats["duplicate_pairs_sample"][0]["index2"] == 1


def test_identical_texts_with_different_labels_are_reported_and_the_policy_decides():
    rows = _rows(["same text", "same text", "other"], labels=["joy", "anger", "joy"])
    kept, stats = remove_near_duplicates(rows, progress=False)
    assert [r["label"] for r in kept] == ["joy", "joy"]  # keep_first: the seed's behaviour
    assert stats["conflicting_label_groups"] == 1
    assert stats["conflict_examples"][0]["rows"][1]["label"] == "anger"
    kept, stats = remove_near_duplicates(rows, conflict_policy="drop_group", progress=False)
    assert [r["text"] for r in kept] == ["other"]
    assert stats["conflict_rows_dropped"] == 1 and stats["removed_count"] == 2


def test_stats_carry_the_seeds_keys(embedded_2000):
    _, stats = remove_near_duplicates(embedded_2000, progress=False)
    for key in ("original_count", "cleaned_count", "removed_count", "removal_rate",
                "duplicate_pairs_sample", "threshold_used", "conflicting_label_groups"):
        assert key in stats
    assert stats["removal_rate"] == pytest.approx(100 * stats["removed_count"] / 2000)
    assert len(stats["duplicate_pairs_sample"]) == 10
    assert all(p["similarity"] >= 0.92 for p in stats["duplicate_pairs_sample"])


def test_cross_pairs_match_a_double_loop(embedded_2000):
    queries = [r["text"] for r in embedded_2000[:300]]
    choices = [r["text"] for r in embedded_2000[300:900]]
    found = {tuple(p) for p in similar_pairs(queries, choices, 0.9, progress=False).tolist()}
    brute = {(i, j) for i, q in enumerate(queries) for j, c in enumerate(choices)
             if fuzz.ratio(q, c) / 100 >= 0.9}
    assert found == brute


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_a_threshold_outside_zero_one_is_rejected(threshold):
    with pytest.raises(ValueError, match="threshold must be in"):
        similar_pairs(["a", "b"], None, threshold)


# ----------------------------------------------------------------------------- split

@pytest.fixture(scope="module")
def deduped_10k():
    kept, _ = remove_near_duplicates(load_embedded(10_000, seed=0).records, progress=False)
    return kept


def test_split_is_stratified_length_matched_and_deterministic(deduped_10k):
    train, val, test, stats = stratified_split(deduped_10k, seed=0)
    again = stratified_split(deduped_10k, seed=0)
    assert [r["text"] for r in again[1]] == [r["text"] for r in val]
    assert len(train) + len(val) + len(test) == len(deduped_10k)
    assert 0.08 < len(val) / len(deduped_10k) < 0.12 and 0.08 < len(test) / len(deduped_10k) < 0.12
    # Length distributions match far better than a random split of the same sizes does.
    shuffled = list(deduped_10k)
    random.Random(0).shuffle(shuffled)
    rand_val, rand_train = shuffled[:len(val)], shuffled[len(val) + len(test):]
    random_ks = ks_statistic([len(r["text"]) for r in rand_val], [len(r["text"]) for r in rand_train])
    assert stats["ks_val_vs_train"] < 0.03 and stats["ks_test_vs_train"] < 0.03
    assert stats["ks_val_vs_train"] < random_ks
    # Every class in val or test also has rows in train.
    train_labels = {r["label"] for r in train}
    assert {r["label"] for r in val + test} <= train_labels
    for key in ("train_text_length_stats", "val_text_length_stats", "test_text_length_stats"):
        assert set(stats[key]) == {"count", "mean", "std", "min", "max"}


def test_another_seed_gives_another_split(deduped_10k):
    a = stratified_split(deduped_10k, seed=0)[1]
    b = stratified_split(deduped_10k, seed=1)[1]
    assert [r["text"] for r in a] != [r["text"] for r in b]


def test_classes_too_small_for_every_split_stay_in_train_and_are_listed():
    rows = _rows([f"t{i}" for i in range(40)] + ["r1", "r2"], labels=["big"] * 40 + ["rare"] * 2)
    train, val, test, stats = stratified_split(rows)
    assert {r["text"] for r in train} >= {"r1", "r2"}
    assert stats["classes_only_in_train"] == [{"label": "rare", "count": 2}]
    assert len(val) == 4 and len(test) == 4


def test_test_ratio_zero_is_the_seeds_two_way_split(deduped_10k):
    train, val, test, stats = stratified_split(deduped_10k, val_ratio=0.1, test_ratio=0.0)
    assert test == [] and stats["test_count"] == 0
    assert len(train) + len(val) == len(deduped_10k)


@pytest.mark.parametrize("val, test", [(-0.1, 0.1), (0.0, 0.1), (0.1, -0.2), (0.6, 0.4), (1.2, 0.0)])
def test_bad_ratios_are_a_clear_error(val, test):
    with pytest.raises(ValueError, match="ratio"):
        stratified_split(_rows(["a", "b", "c"]), val_ratio=val, test_ratio=test)


def test_ks_statistic_is_zero_for_equal_samples_and_one_for_disjoint():
    assert ks_statistic([1, 2, 3], [3, 2, 1]) == 0.0
    assert ks_statistic([1, 2], [5, 6]) == 1.0


# ----------------------------------------------------------------------------- leakage

def test_after_dedup_no_val_or_test_row_leaks_from_train(deduped_10k):
    train, val, test, _ = stratified_split(deduped_10k)
    for name, part in (("val", val), ("test", test)):
        kept, report = remove_leakage(train, part, name=name)
        assert report["removed"] == 0 and len(kept) == len(part)


def test_undeduplicated_data_leaks_and_every_leak_is_caught():
    rows = load_embedded(3000, seed=0).records
    train, val, _, _ = stratified_split(rows)
    kept, report = remove_leakage(train, val)
    assert report["removed"] > 0
    assert len(kept) == len(val) - report["removed"]
    train_texts = [r["text"] for r in train]
    # Brute force: nothing left in val is within the threshold of any train row.
    left = [r["text"] for r in kept]
    scores = np.array([[fuzz.ratio(v, t) for t in train_texts] for v in left[:200]])
    assert (scores / 100 < 0.92).all()
    first = report["rows"][0]
    assert fuzz.ratio(first["text_preview"], first["train_text_preview"]) / 100 >= 0.92
