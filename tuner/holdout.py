"""The val rows held out for the final choice, and the rows every other decision reads.

Phases 1 and 2 read the whole val split (the LR choice, the early stop, the learning curves).
From phase 3 on, val is split once, stratified by the primary task's label and seeded by the
run's seed, into

- the *search* rows: every decision that fits or picks a candidate reads only these (the
  overfitting point, the sweet spots, the best single checkpoint, the crossover study, the
  greedy soup's admissions, the variant ensemble's centre);
- the *selection* rows (``SELECTION_SHARE`` of val): read by the final choice alone
  (``tuner.final_choice``), through ``HeldOutRows``, which hands them out only inside
  ``opened(purpose)`` and records every purpose, so a test can show nothing else read them.

With 882 val rows (the default run), one row is 0.11 points of accuracy; the best of 30+
recipes scored on the same rows that pick among them is biased upward by the winner's curse,
which rows no candidate was fitted on do not share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.data import EncodedData
from model.tasks import TaskSpec

SELECTION_SHARE = 0.5


def split_rows(targets: torch.Tensor, task: TaskSpec, seed: int,
               share: float = SELECTION_SHARE) -> tuple[list[int], list[int]]:
    """(search rows, selection rows) of a split whose primary targets are ``targets``.

    Stratified for a single-label task: the rows are ordered by label, shuffled within each
    label (seeded), and every row whose running share crosses ``share`` goes to selection,
    so each label splits as evenly as its count allows and the totals differ by at most one.
    Other task kinds: the same over one shuffled order.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"the selection share must be in (0, 1), got {share!r}")
    rng = np.random.default_rng([seed, 0x5E1EC7])
    n = int(targets.shape[0])
    labels = (targets.reshape(n).cpu().numpy() if task.kind == "single"
              else np.zeros(n, dtype=np.int64))
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c))
                            for c in np.unique(labels)]) if n else np.zeros(0, dtype=np.int64)
    position = np.arange(1, n + 1)
    to_selection = np.floor(position * share) > np.floor((position - 1) * share)
    return sorted(order[~to_selection].tolist()), sorted(order[to_selection].tolist())


def subset(data: EncodedData, rows: Sequence[int]) -> EncodedData:
    """The rows ``rows`` of ``data``, in that order (CPU tensors, as ``data`` keeps them)."""
    index = torch.as_tensor(list(rows), dtype=torch.long, device=data.ids.device)
    return EncodedData(data.ids[index], data.mask[index],
                       {k: v[index] for k, v in data.targets.items()})


def rows_digest(rows: Sequence[int]) -> str:
    """A short fingerprint of a row set: what a study or a cache was scored on."""
    return hashlib.sha256(json.dumps(list(rows)).encode()).hexdigest()[:16]


@dataclass
class HeldOutRows:
    """Rows kept from every decision but one. ``opened(purpose)`` yields them and records
    the purpose in ``reads``; there is no other way to get them."""

    _data: EncodedData = field(repr=False)
    rows: tuple[int, ...]
    reads: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    @contextlib.contextmanager
    def opened(self, purpose: str) -> Iterator[EncodedData]:
        self.reads.append(purpose)
        yield self._data


@dataclass(frozen=True)
class ValSplit:
    """The search rows (an ``EncodedData``), the held-out selection rows, and the evidence."""

    search: EncodedData
    search_index: tuple[int, ...]  # which val rows, in val's order
    selection: HeldOutRows
    evidence: dict[str, Any]

    @property
    def scored_on(self) -> dict[str, Any]:
        """What the search decisions were scored on, for studies and caches to compare."""
        return {"rows": "search", "n": self.evidence["search_rows"],
                "digest": self.evidence["search_digest"]}


def split_val(val: EncodedData, task: TaskSpec, seed: int,
              share: float = SELECTION_SHARE) -> ValSplit:
    """Split ``val`` into the search rows and the held-out selection rows (``split_rows``)."""
    search, selection = split_rows(val.targets[task.name], task, seed, share)
    if not search or not selection:
        raise ValueError(f"val has {len(val)} rows: too few to hold {share:.0%} of them out "
                         "for the final choice and search on the rest (at least 2 are needed)")
    evidence = {
        "rule": (f"val split once, stratified by the primary task's label ({task.name}), "
                 f"seed {seed}: {share:.0%} held out for the final choice, the rest read by "
                 "every other decision of phases 3 and 4"),
        "seed": seed, "selection_share": share, "val_rows": len(val),
        "search_rows": len(search), "selection_rows": len(selection),
        "search_digest": rows_digest(search), "selection_digest": rows_digest(selection),
        "selection": selection,
    }
    return ValSplit(subset(val, search), tuple(search),
                    HeldOutRows(subset(val, selection), tuple(selection)), evidence)


def same_rows(recorded: Mapping[str, Any] | None, scored_on: Mapping[str, Any]) -> bool:
    return bool(recorded) and dict(recorded) == dict(scored_on)


__all__ = ["SELECTION_SHARE", "HeldOutRows", "ValSplit", "rows_digest", "same_rows",
           "split_rows", "split_val", "subset"]
