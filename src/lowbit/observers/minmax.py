"""``minmax``: the exact running range of each block.

SYMMETRIC grids use the max-abs (``[-amax, amax]``, or ``[0, max]`` on an
unsigned grid), AFFINE grids the min-max widened to contain 0.  Nothing is
clipped, so ``sat_ratio`` is 0 by construction (except negative values on an
unsigned SYMMETRIC grid, which are counted).  Merging is exact: min of mins,
max of maxes.
"""

from __future__ import annotations

import torch

from ..primitives.affine import block_reduce
from ..types import Scheme
from .base import Observer
from .registry import register_observer


def grid_range(min_val: torch.Tensor, max_val: torch.Tensor, signed: bool,
               scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """The range a grid covers when it is fitted to ``[min_val, max_val]`` without clipping."""
    if scheme is Scheme.SYMMETRIC:
        if signed:
            amax = torch.maximum(-min_val, max_val)
            return -amax, amax
        return torch.zeros_like(max_val), max_val.clamp(min=0)
    return min_val.clamp(max=0), max_val.clamp(min=0)


def block_minmax(x: torch.Tensor, block: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat per-block ``(min, max)`` of ``x`` (one fused pass when there is one block)."""
    if tuple(block) == tuple(x.shape):
        lo, hi = torch.aminmax(x)
        return lo.reshape(1).float(), hi.reshape(1).float()
    return (block_reduce(x, block, "amin").reshape(-1).float(),
            block_reduce(x, block, "amax").reshape(-1).float())


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Running per-block minimum and maximum; every granularity."""

    def __init__(self, spec):
        super().__init__(spec)
        self.min_val = torch.zeros(0)
        self.max_val = torch.zeros(0)

    def _observe(self, x, block):
        lo, hi = block_minmax(x, block)
        if self.n_seen == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def _merge_from(self, other):
        self.min_val = torch.minimum(self.min_val, other.min_val)
        self.max_val = torch.maximum(self.max_val, other.max_val)

    def _choose(self):
        return grid_range(self.min_val, self.max_val, self.qtype.signed, self.scheme)

    def _reduce_ops(self):
        return {"min_val": "min", "max_val": "max"}

    def _state(self):
        return {"min_val": self.min_val, "max_val": self.max_val}

    def _load_state(self, state):
        self.min_val, self.max_val = state["min_val"].float(), state["max_val"].float()
