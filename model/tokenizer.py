"""UTF-8 byte tokenizer: any script, no vocabulary file, no downloads.

Ids 0..255 are the bytes of the UTF-8 encoding; two special ids follow them.
Every sequence starts with CLS and is padded with PAD on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PAD_ID = 256
CLS_ID = 257
VOCAB_SIZE = 258


@dataclass(frozen=True)
class ByteTokenizer:
    """Encode text as ``[CLS] + utf8 bytes``, truncated to ``max_length`` ids."""

    max_length: int = 64

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (CLS plus one byte), got {self.max_length!r}")

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        """Ids of one text; bytes past ``max_length - 1`` are dropped."""
        return [CLS_ID, *text.encode("utf-8")[: self.max_length - 1]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, skipping special ids; a multi-byte character cut by
        truncation is dropped rather than turned into a replacement character."""
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="ignore")

    def encode_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad a batch to its longest row.

        Returns ``input_ids`` (N, L) int64 and ``attention_mask`` (N, L) bool,
        where L = min(max_length, longest encoded text).
        """
        encoded = [self.encode(t) for t in texts]
        length = max((len(e) for e in encoded), default=1)
        # Encoded data lives on the CPU; batches move to the training device one at a time.
        ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long, device="cpu")
        for row, e in enumerate(encoded):
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long, device="cpu")
        return ids, ids != PAD_ID
