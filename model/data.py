"""A split as tensors, and its batches: what the training engine reads and the dataset
readers produce."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class EncodedData:
    """A split as tensors: ids (N, L) int64, mask (N, L) bool, targets task -> (N, ...)."""

    ids: torch.Tensor
    mask: torch.Tensor
    targets: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        if self.mask.shape != self.ids.shape:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} != ids {tuple(self.ids.shape)}")
        for task, t in self.targets.items():
            if t.shape[0] != n:
                raise ValueError(f"targets[{task!r}] has {t.shape[0]} rows, ids have {n}")

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple:
        """Rows ``index``, cut to the batch's longest text: (ids (B, L_b), mask, targets)."""
        mask = self.mask[index]
        width = max(int(mask.sum(1).max()), 1)
        return (self.ids[index, :width].to(device), mask[:, :width].to(device),
                {k: v[index].to(device) for k, v in self.targets.items()})


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    """Index batches over n rows; shuffled when a generator is given."""
    # On the CPU, wherever training runs: the indices pick rows of the CPU-held data, and
    # only the picked batch moves to the device (EncodedData.batch).
    order = (torch.randperm(n, generator=generator, device="cpu") if generator is not None
             else torch.arange(n, device="cpu"))
    yield from order.split(batch_size)


__all__ = ["EncodedData", "batch_indices"]
