"""Fast search for text pairs whose ``rapidfuzz.fuzz.ratio(a, b) / 100 >= threshold``.

fuzz.ratio is the normalized InDel similarity, 100 * (1 - d / (l1 + l2)), and the
InDel distance d is at least |l1 - l2|. So a pair can only reach the threshold t
when |l1 - l2| <= (1 - t) * (l1 + l2) (for t = 0.92: 25 |l1 - l2| <= 2 (l1 + l2)).

Rows are sorted by length; each block of equal-length queries is scored with
``rapidfuzz.process.cdist`` (uint8, score_cutoff, all cores) only against the
contiguous run of choices whose lengths can qualify. Texts are first re-coded
into a one-byte alphabet (see ``_byte_alphabet``) so rapidfuzz takes its fastest
kernel. Every candidate whose score is not certain is re-checked with the exact
expression on the original texts, so the result equals a plain double loop.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from rapidfuzz import fuzz, process
from tqdm.auto import tqdm

# cdist cells per block (uint8): bounds the score matrix at ~64 MB per call.
_CELLS_PER_BLOCK = 64_000_000
_OWN_CODES = 256  # characters ranked below this get a code of their own


def is_similar(a: str, b: str, threshold: float) -> bool:
    """The strategy's expression, verbatim."""
    return fuzz.ratio(a, b) / 100.0 >= threshold


def length_window(threshold: float) -> tuple[float, float]:
    """(low, high) factors: a partner of a length-l text has length in [l * low, l * high]."""
    c = 1.0 - threshold
    return (1.0 - c) / (1.0 + c), ((1.0 + c) / (1.0 - c) if c < 1.0 else math.inf)


def _byte_alphabet(texts: Sequence[str]) -> tuple[dict[int, str], dict[int, None]]:
    """Re-code every character into one of 256 code points, the most frequent first.

    rapidfuzz's bit-parallel kernels are fastest for strings whose characters are all
    below 256; emoticons use ~2,500 distinct characters. The 256 most frequent get
    codes of their own, so a pair of texts made only of them scores exactly as before
    (fuzz.ratio only asks whether characters are equal). Rarer characters share the
    codes 128..255: sharing can only add matches, so their scores are upper bounds,
    still safe for finding candidates, and such pairs are always re-checked.

    Returns (translate table, a table that deletes every shared character).
    """
    ranked = [ch for ch, _ in Counter("".join(texts)).most_common()]
    table = {ord(ch): chr(r if r < _OWN_CODES else 128 + r % 128) for r, ch in enumerate(ranked)}
    shared = {ord(ch): None for ch in ranked[_OWN_CODES:]}
    return table, shared


def similar_pairs(
    queries: Sequence[str],
    choices: Sequence[str] | None,
    threshold: float,
    progress: bool = True,
) -> np.ndarray:
    """Every pair reaching ``threshold``, as an int64 array (k, 2) of (query, choice) indices.

    ``choices=None`` compares ``queries`` with themselves and returns each unordered pair
    once, as (i, j) with i < j. No Python loop runs over pairs, only over candidates.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    same = choices is None
    choices = queries if same else choices
    if not queries or not choices:
        return np.empty((0, 2), dtype=np.int64)

    # -- re-code to one byte per character; "exact" texts contain no shared code.
    table, shared = _byte_alphabet(list(queries) if same else [*queries, *choices])
    coded_q = [t.translate(table) for t in queries]
    coded_c = coded_q if same else [t.translate(table) for t in choices]
    exact_q = np.fromiter((len(t.translate(shared)) == len(t) for t in queries), bool, len(queries))
    exact_c = exact_q if same else np.fromiter(
        (len(t.translate(shared)) == len(t) for t in choices), bool, len(choices))

    # -- sort by length; the length bound makes each block's columns contiguous.
    q_len = np.fromiter(map(len, queries), np.int64, len(queries))
    c_len = np.fromiter(map(len, choices), np.int64, len(choices))
    q_order, c_order = np.argsort(q_len, kind="stable"), np.argsort(c_len, kind="stable")
    q_sorted_len, c_sorted_len = q_len[q_order], c_len[c_order]
    c_sorted = [coded_c[i] for i in c_order]
    low, high = length_window(threshold)
    # uint8 scores are rounded: within 0.5 of the (upper-bound) ratio. Below cutoff is
    # surely no pair; at or above sure_at surely is one, for two exact texts.
    cutoff = max(0, math.floor(threshold * 100.0 - 1.0))
    sure_at = math.ceil(threshold * 100.0 + 1.0)
    n = len(queries)

    def columns(first: int, last: int) -> tuple[int, int]:
        """Sorted-choice range that sorted queries [first, last) can match."""
        lo = int(np.searchsorted(c_sorted_len, q_sorted_len[first] * low - 1e-9, side="left"))
        hi = int(np.searchsorted(c_sorted_len, q_sorted_len[last - 1] * high + 1e-9, side="right"))
        return (max(lo, first) if same else lo), hi  # same: each pair once, from its lower row

    def block_end(first: int) -> int:
        """Queries of one length form a block, split to fit the cell budget."""
        same_len_end = int(np.searchsorted(q_sorted_len, q_sorted_len[first], side="right"))
        lo, hi = columns(first, first + 1)
        return min(same_len_end, first + max(1, _CELLS_PER_BLOCK // max(1, hi - lo)))

    found: list[np.ndarray] = []
    bar = tqdm(total=n, desc="near-duplicates", unit="row", leave=False,
               disable=not progress or n < 5_000)
    start = 0
    while start < n:
        stop = block_end(start)
        col_lo, col_hi = columns(start, stop)
        if col_hi > col_lo:
            block_q = [coded_q[i] for i in q_order[start:stop]]
            block_c = c_sorted[col_lo:col_hi]  # a different list object: keeps SIMD on
            scores = process.cdist(block_q, block_c, scorer=fuzz.ratio, score_cutoff=cutoff,
                                   dtype=np.uint8, workers=-1)       # (block, columns)
            if cutoff > 0:
                rows, cols = np.nonzero(scores)  # cdist zeroed every score below cutoff
            else:
                rows, cols = np.nonzero(np.ones_like(scores, dtype=bool))
            if same:
                keep = start + rows < col_lo + cols  # strictly after in sorted order
                rows, cols = rows[keep], cols[keep]
            qi, ci = q_order[start + rows], c_order[col_lo + cols]
            sure = (scores[rows, cols] >= sure_at) & exact_q[qi] & exact_c[ci]
            unsure = np.flatnonzero(~sure)
            if len(unsure):
                # The exact expression, on the original texts.
                sure[unsure] = np.fromiter(
                    (is_similar(queries[a], choices[b], threshold)
                     for a, b in zip(qi[unsure].tolist(), ci[unsure].tolist(), strict=True)),
                    dtype=bool, count=len(unsure))
            if sure.any():
                found.append(np.stack([qi[sure], ci[sure]], axis=1))
        bar.update(stop - start)
        start = stop
    bar.close()
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    if same:
        pairs.sort(axis=1)  # (i, j) with i < j in input order
    return pairs
