"""The search / selection split of val: stratified, seeded, disjoint, and the selection rows
handed out only through HeldOutRows.opened, which records who read them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from model import TaskSpec
from model.data import EncodedData
from tuner.holdout import HeldOutRows, rows_digest, split_rows, split_val, subset

EMOTION = TaskSpec("emotion", "single", 5)


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])[
        torch.randperm(sum(counts), generator=torch.Generator().manual_seed(1))]


def test_every_label_splits_as_evenly_as_its_count_allows():
    labels = _labels([40, 17, 9, 2, 1])
    search, selection = split_rows(labels, EMOTION, seed=0)
    assert sorted(search + selection) == list(range(len(labels)))  # disjoint, every row
    assert abs(len(search) - len(selection)) <= 1
    per = {side: Counter(labels[rows].tolist()) for side, rows in
           (("search", search), ("selection", selection))}
    for label, n in Counter(labels.tolist()).items():
        assert abs(per["search"][label] - per["selection"][label]) <= 1, label
        assert per["search"][label] + per["selection"][label] == n


def test_the_split_depends_on_the_seed_alone():
    labels = _labels([30, 30, 30])
    assert split_rows(labels, EMOTION, 3) == split_rows(labels.clone(), EMOTION, 3)
    assert split_rows(labels, EMOTION, 3) != split_rows(labels, EMOTION, 4)
    _search, selection = split_rows(labels, EMOTION, 0, share=0.25)
    assert len(selection) == 22 or len(selection) == 23


def test_the_selection_rows_come_out_only_through_opened_which_records_the_purpose():
    labels = _labels([6, 6])
    data = EncodedData(torch.arange(12).reshape(12, 1), torch.ones(12, 1, dtype=torch.bool),
                       {"emotion": labels})
    split = split_val(data, EMOTION, seed=0)
    assert len(split.search) + len(split.selection) == 12
    assert split.evidence["selection"] == list(split.selection.rows)
    assert split.scored_on == {"rows": "search", "n": 6,
                               "digest": rows_digest(split.search_index)}
    assert not hasattr(split.selection, "ids") and split.selection.reads == []
    with split.selection.opened("final choice") as rows:
        assert rows.ids.flatten().tolist() == list(split.selection.rows)
    assert split.selection.reads == ["final choice"]
    assert subset(data, [3, 1]).ids.flatten().tolist() == [3, 1]
    assert isinstance(split.selection, HeldOutRows)


def test_a_val_too_small_to_split_is_refused_with_its_size():
    one = EncodedData(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                      {"emotion": torch.zeros(1, dtype=torch.long)})
    with pytest.raises(ValueError, match="val has 1 rows"):
        split_val(one, EMOTION, seed=0)
    with pytest.raises(ValueError, match="share must be in"):
        split_rows(torch.zeros(4, dtype=torch.long), EMOTION, 0, share=1.0)
