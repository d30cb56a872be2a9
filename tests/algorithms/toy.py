"""A tiny decoder-shaped model shared by the algorithm tests: an input projection, repeated
blocks called with a keyword mask and a cache argument, and a head."""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, hidden, mask=None, past_key_values=None, use_cache=False):
        assert past_key_values is None and not use_cache, "the runner turns caches off"
        h = self.down(torch.relu(self.up(self.norm(hidden))))
        return (hidden + h * mask,)


class Toy(nn.Module):
    def __init__(self, width: int = 32, depth: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(8, width)
        self.layers = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 4)

    def forward(self, x, mask):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h, mask=mask, past_key_values=None, use_cache=False)[0]
        return self.head(h)


def batches(n: int = 3, rows: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, rows, 8, generator=g),
             (torch.rand(2, rows, 1, generator=g) > 0.2).float()) for _ in range(n)]
