"""A minimal user model for ``--model examples.bag_of_bytes:build``.

Two modules predict every task: ``bag`` (mean of byte embeddings) and ``conv``
(a 1-D convolution over them); their average is the fused prediction. Each module
is its own group, so checkpoints, sweet spots and the crossover treat them apart.
"""

from __future__ import annotations

import torch
from torch import nn

from model import VOCAB_SIZE, GroupSpec, TaskSpec


class BagOfBytes(nn.Module):
    def __init__(self, tasks: tuple[TaskSpec, ...], dim: int = 32):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.bag_heads = nn.ModuleDict({t.name: nn.Linear(dim, t.num_outputs) for t in tasks})
        self.conv_heads = nn.ModuleDict({t.name: nn.Linear(dim, t.num_outputs) for t in tasks})

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        m = mask.unsqueeze(-1).float()                      # (B, L, 1)
        x = self.embedding(ids) * m                         # (B, L, D)
        bag = x.sum(1) / m.sum(1).clamp(min=1)              # (B, D)
        conv = torch.relu(self.conv(x.transpose(1, 2))).amax(-1)  # (B, D)
        out = {"bag": {n: h(bag) for n, h in self.bag_heads.items()},
               "conv": {n: h(conv) for n, h in self.conv_heads.items()}}
        out["fused"] = {n: 0.5 * (out["bag"][n] + out["conv"][n]) for n in self.bag_heads}
        return out


def build(tasks: tuple[TaskSpec, ...], max_length: int) -> tuple[nn.Module, GroupSpec]:
    model = BagOfBytes(tasks)
    spec = GroupSpec(
        groups={"bag": ("embedding.", "bag_heads."), "conv": ("conv.", "conv_heads.")},
        group_losses={"bag": ("bag",), "conv": ("conv",)},
    )
    return model, spec
