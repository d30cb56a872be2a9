"""``moving_average`` (``ema``): exponential moving average of per-block min and max.

The first batch initialises the averages; every later batch moves them by
``averaging_constant`` (0.01 by default) toward its own min/max:
``m <- m + c * (batch_min - m)``.  Every granularity.

``sat_ratio`` counts, for each batch, the values outside the running range right
after that batch was folded in (the range moves, so later batches are not
re-checked against earlier data).

Merge: an EMA depends on the order of the stream, so two observers cannot be
combined into exactly what one observer of both streams would hold.  ``merge``
takes the batch-count-weighted average of the two EMAs, which is symmetric
(``a.merge(b)`` equals ``b.merge(a)``), leaves an observer unchanged when merged with
an empty one or with a copy of itself, and always lies between the two ranges.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..primitives.affine import expand_param
from ..types import Scheme, n_blocks
from .base import Observer
from .minmax import block_minmax, grid_range
from .registry import register_observer

DEFAULT_AVERAGING_CONSTANT = 0.01


@register_observer("moving_average")
class MovingAverageObserver(Observer):
    """Per-block EMA of min and max; ``averaging_constant`` in (0, 1]."""

    def __init__(self, spec, averaging_constant: float = DEFAULT_AVERAGING_CONSTANT):
        super().__init__(spec)
        if isinstance(averaging_constant, bool) or not isinstance(averaging_constant, (int, float)) \
                or not 0.0 < float(averaging_constant) <= 1.0:
            raise ConfigError("averaging_constant", averaging_constant, "a number in (0, 1]",
                              fix="use a small constant such as 0.01 (1.0 keeps only the last batch)")
        self.c = float(averaging_constant)
        self.n_batches = 0
        self.n_out = 0
        self.min_val = torch.zeros(0)
        self.max_val = torch.zeros(0)

    def _observe(self, x, block):
        lo, hi = block_minmax(x, block)
        lo, hi = lo.double(), hi.double()
        if self.n_batches == 0:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = self.min_val + self.c * (lo - self.min_val)
            self.max_val = self.max_val + self.c * (hi - self.max_val)
        self.n_batches += 1
        if self.scheme is Scheme.FIXED_POINT:
            return                                  # sat_ratio comes from the fixed grid
        glo, ghi = grid_range(self.min_val.float(), self.max_val.float(), self.qtype.signed,
                              self.scheme)
        check_low = self._fixed_bounds() is None    # negatives on [0, hi] are counted by the base
        if not bool((hi.float() > ghi).any()) and not (check_low and bool((lo.float() < glo).any())):
            return                                  # the batch lies inside the running range
        stat_shape = n_blocks(tuple(x.shape), block)
        outside = x > expand_param(ghi.reshape(stat_shape), tuple(x.shape), block)
        if check_low:
            outside |= x < expand_param(glo.reshape(stat_shape), tuple(x.shape), block)
        self.n_out += int(outside.sum())

    def _merge_from(self, other):
        wa, wb = self.n_batches, other.n_batches
        self.min_val = (wa * self.min_val + wb * other.min_val) / (wa + wb)
        self.max_val = (wa * self.max_val + wb * other.max_val) / (wa + wb)
        self.n_batches += other.n_batches
        self.n_out += other.n_out

    def _choose(self):
        return grid_range(self.min_val.float(), self.max_val.float(), self.qtype.signed,
                          self.scheme)

    def _outside_count(self):
        return float(self.n_out)

    def _reduce_ops(self):  # the batch-count-weighted average of merge()
        return {"min_val": "mean:n_batches", "max_val": "mean:n_batches",
                "n_batches": "sum", "n_out": "sum"}

    def _config(self):
        return {"averaging_constant": self.c}

    def _summary_extra(self):
        return {"averaging_constant": self.c, "n_batches": self.n_batches}

    def _state(self):
        return {"min_val": self.min_val, "max_val": self.max_val,
                "n_batches": torch.tensor(self.n_batches, dtype=torch.int64),
                "n_out": torch.tensor(self.n_out, dtype=torch.int64)}

    def _load_state(self, state):
        self.min_val, self.max_val = state["min_val"].double(), state["max_val"].double()
        self.n_batches, self.n_out = int(state["n_batches"]), int(state["n_out"])
