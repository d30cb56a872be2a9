"""Shared machinery of the histogram observers (percentile, mse, entropy, auto).

A histogram observer keeps the exact extremes of its data plus one
:class:`~lowbit.observers.histogram.Histogram` (fixed size: memory does not
grow with the number of values seen).  What is histogrammed depends on the grid:

* SYMMETRIC on a signed grid (and FIXED_POINT): ``|x|`` on ``[0, R]``;
* SYMMETRIC on an unsigned grid: ``max(x, 0)`` on ``[0, R]`` (negative values are
  counted as saturated at update time);
* AFFINE: ``x`` itself on ``[-R, R]``.

Subclasses choose a range from the histogram (``_choose_range``) returning
python floats ``(lo, hi)`` in data units; the base turns it into a grid range.
"""

from __future__ import annotations

import math

import torch

from ..primitives.affine import check_finite
from ..types import PerTensor, Scheme
from .base import Observer
from .histogram import Histogram
from .minmax import grid_range
from .search import expected_sq_error, grid_bounds, outside_count

DEFAULT_BINS = 2048


class HistogramObserver(Observer):
    """Per-tensor observer backed by a growing power-of-two histogram."""

    granularities = (PerTensor,)

    def __init__(self, spec, bins: int = DEFAULT_BINS):
        super().__init__(spec)
        self.two_sided = self.scheme is Scheme.AFFINE
        self.hist = Histogram(bins, signed=self.two_sided)
        self.min_val = 0.0       # exact extremes of the histogrammed values
        self.max_val = 0.0
        self._cached = None      # chosen grid range, recomputed after new data

    # ------------------------------------------------------------------ streaming

    def _check_finite(self, x):
        """Checked in :meth:`_observe` instead: a NaN or Inf shows in the extremes."""

    def _observe(self, x, block):
        self._cached = None
        lo, hi = (float(v) for v in torch.aminmax(x))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            check_finite(x, f"input to the {self.method} observer")
        if self.two_sided:
            self.hist.add(x, max(-lo, hi))
        elif self.qtype.signed or self.scheme is not Scheme.SYMMETRIC:
            hi, lo = max(-lo, hi), 0.0
            self.hist.add(x.abs(), hi)
        else:                                   # unsigned SYMMETRIC: the grid is [0, max]
            hi, lo = max(hi, 0.0), 0.0
            self.hist.add(x.clamp(min=0), hi)
        if self.n_seen == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = min(self.min_val, lo), max(self.max_val, hi)

    def _merge_from(self, other):
        self._cached = None
        self.hist.merge(other.hist)
        self.min_val = min(self.min_val, other.min_val)
        self.max_val = max(self.max_val, other.max_val)

    # ------------------------------------------------------------------ choice

    def _minmax_range(self) -> tuple[float, float]:
        """The un-clipped range in data units."""
        return (self.min_val if self.two_sided else -self.max_val), self.max_val

    def _choose_range(self) -> tuple[float, float]:
        raise NotImplementedError

    def _as_grid(self, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
        return grid_range(torch.tensor([lo]), torch.tensor([hi]), self.qtype.signed, self.scheme)

    def _choose(self):
        if self._cached is None:             # cleared whenever the data changes
            self._cached = self._as_grid(*self._choose_range())
        return self._cached

    def _outside_count(self):
        lo, hi = self._choose()
        if self.two_sided:
            return outside_count(self.hist, float(lo), float(hi))
        return outside_count(self.hist, -float("inf"), float(hi))

    def _grid_of(self, lo: torch.Tensor, hi: torch.Tensor):
        """``(scale, lowest, highest)`` of the grids fitted to candidate ranges ``(n,)``.

        On a one-sided histogram (``|x|`` or ReLU) only the positive side matters,
        so the lowest representable value is mirrored from the highest."""
        s, low, high = grid_bounds(lo, hi, self.qtype, self.scheme)
        if not self.two_sided:
            low = -high
        return s, low, high

    def _score(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Estimated squared quantization error of all observed values, per candidate range."""
        lo = torch.as_tensor(lo, dtype=torch.float64).reshape(-1)
        hi = torch.as_tensor(hi, dtype=torch.float64).reshape(-1)
        return expected_sq_error(self.hist, *self._grid_of(lo, hi))

    # ------------------------------------------------------------------ state

    def _reduce_ops(self):  # counts on one agreed grid (reduce_grid/align_grid) add up
        return {"hist.counts": "sum", "hist.exp": "max", "min_val": "min", "max_val": "max"}

    def reduce_grid(self):
        return {} if self.hist.exp is None else {"hist": self.hist.exp}

    def align_grid(self, grid):
        if "hist" in grid and self.hist.exp is not None:
            self._cached = None
            self.hist.grow(int(grid["hist"]))

    def _config(self):
        return {"bins": self.hist.bins}

    def _state(self):
        return {**self.hist.state("hist."),
                "min_val": torch.tensor(self.min_val, dtype=torch.float64),
                "max_val": torch.tensor(self.max_val, dtype=torch.float64)}

    def _load_state(self, state):
        self._cached = None
        self.hist.load(state, "hist.")
        self.min_val = float(state["min_val"])
        self.max_val = float(state["max_val"])

