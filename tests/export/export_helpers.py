"""Small models and recipes shared by the export tests (imported by path, like tests/cli's)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit import ByType, LayerConfig, PerGroup, QuantSpec, Recipe, Rule, int4


class TinyMLP(nn.Module):
    """Token ids (B, T) -> Embedding 50x32 -> Linear 32->64 -> ReLU -> Linear 64->16."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


class TinyNet(nn.Module):
    """Float features (B, 8) -> Linear 8->16 -> ReLU -> Linear 16->4."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


#: int4 affine weights in groups of 16 inputs for Linear and Embedding (blocked Q/DQ at opset 21)
W4_G16 = Recipe((Rule(ByType(("Linear", "Embedding")), LayerConfig(
    QuantSpec(qtype=int4, scheme="affine", granularity=PerGroup(16, axis=1)), None)),), "w4-g16")


def token_batches(n: int, batch: int = 4, seq: int = 6, seed: int = 0) -> list[torch.Tensor]:
    """``n`` batches of random token ids (batch, seq) below 50."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (batch, seq), generator=g) for _ in range(n)]
