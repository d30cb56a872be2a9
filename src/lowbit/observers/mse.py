"""``mse``: the clipping ratio that minimises the quantization MSE.

Candidates are ranges ``r * [min, max]`` (``r * [-amax, amax]`` when symmetric) for
``r = k/100, k = 1..100``; ``r = 1`` is min-max, so the search can never choose a
range worse than min-max by its own measure.

* PerTensor (streamed activations): candidates are scored on the observer's
  bounded histogram with an exact within-bin error model
  (:func:`~lowbit.observers.search.expected_sq_error`).
* Other granularities (per-channel weights, groups, tokens): each ``update`` scores
  every candidate for every block directly on the tensor (vectorised over blocks)
  and adds the squared errors to a ``(blocks, 100)`` table; the chosen ratio of a
  block minimises its summed error and is applied to the block's exact running
  range.  With one tensor (a weight) this is the exact search; with a stream the
  ratios are relative to each batch's own range.  Merging adds the tables and is
  exactly equivalent to one observer seeing both streams.
"""

from __future__ import annotations

import torch

from ..primitives.affine import pad_to_blocks
from ..types import PerTensor
from .base import ALL_GRANULARITIES
from .hist_base import DEFAULT_BINS, HistogramObserver
from .minmax import block_minmax, grid_range
from .registry import register_observer
from .search import MSE_CANDIDATES, blocked_sq_errors, clip_ratios


def mse_range(obs: HistogramObserver) -> tuple[float, float, float, float]:
    """``(lo, hi, ratio, est_sq_error)`` of the best clipping ratio on a histogram observer."""
    lo0, hi0 = obs._minmax_range()
    r = clip_ratios()
    err = obs._score(r * lo0, r * hi0)
    best = int(torch.argmin(err))
    ratio = float(r[best])
    return lo0 * ratio, hi0 * ratio, ratio, float(err[best])


def _as_blocks(x: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """``x`` as ``(n_blocks, block_elems)``, blocks in row-major order of the qparams (a
    ragged last block is padded with zeros, which every grid holds exactly: no error)."""
    x = pad_to_blocks(x, block, "zeros")
    shape: list[int] = []
    for n, b in zip(x.shape, block):
        shape += [n // b, b]
    nd = len(block)
    v = x.reshape(shape).permute(*range(0, 2 * nd, 2), *range(1, 2 * nd, 2))
    return v.reshape(-1, max(1, int(torch.tensor(block).prod()))) if nd else v.reshape(1, -1)


@register_observer("mse")
class MSEObserver(HistogramObserver):
    """MSE-optimal clipping; histogram search per tensor, direct search per block."""

    granularities = ALL_GRANULARITIES

    def __init__(self, spec, bins: int = DEFAULT_BINS):
        super().__init__(spec, bins)
        self.blocked = not isinstance(spec.granularity, PerTensor)
        self.ratio: torch.Tensor | None = None
        self.est_error = 0.0
        if self.blocked:
            self.bmin = torch.zeros(0)
            self.bmax = torch.zeros(0)
            self.sse = torch.zeros(0, MSE_CANDIDATES, dtype=torch.float64)
            self.n_out = torch.zeros(0, MSE_CANDIDATES, dtype=torch.float64)

    # ------------------------------------------------------------------ blocked path

    def _observe(self, x, block):
        if not self.blocked:
            return super()._observe(x, block)
        self._cached = None
        lo, hi = block_minmax(x, block)
        glo, ghi = grid_range(lo, hi, self.qtype.signed, self.scheme)
        sse, n_out = blocked_sq_errors(_as_blocks(x.float(), block), glo, ghi, self.qtype,
                                       self.scheme)
        if self.n_seen == 0:
            self.bmin, self.bmax, self.sse, self.n_out = lo, hi, sse, n_out
        else:
            self.bmin, self.bmax = torch.minimum(self.bmin, lo), torch.maximum(self.bmax, hi)
            self.sse, self.n_out = self.sse + sse, self.n_out + n_out

    def _merge_from(self, other):
        if not self.blocked:
            return super()._merge_from(other)
        self._cached = None
        self.bmin, self.bmax = torch.minimum(self.bmin, other.bmin), torch.maximum(self.bmax, other.bmax)
        self.sse, self.n_out = self.sse + other.sse, self.n_out + other.n_out

    def _choose(self):
        if not self.blocked:
            return super()._choose()
        if self._cached is None:
            best = torch.argmin(self.sse, dim=1)                     # (blocks,)
            self.ratio = clip_ratios()[best].float()
            lo, hi = grid_range(self.bmin, self.bmax, self.qtype.signed, self.scheme)
            self._cached = (lo * self.ratio, hi * self.ratio)
            self.est_error = float(self.sse.gather(1, best[:, None]).sum())
            self._out = float(self.n_out.gather(1, best[:, None]).sum())
        return self._cached

    def _choose_range(self):
        lo, hi, ratio, self.est_error = mse_range(self)
        self.ratio = torch.tensor([ratio])
        return lo, hi

    def _outside_count(self):
        if not self.blocked:
            return super()._outside_count()
        self._choose()
        return self._out

    # ------------------------------------------------------------------ reporting / state

    def _summary_extra(self):
        ratio = self.ratio.reshape(-1)
        return {"ratio": float(ratio[0]) if ratio.numel() == 1 else ratio.tolist(),
                "est_mse": self.est_error / max(self.n_seen, 1)}

    def _reduce_ops(self):
        if not self.blocked:
            return super()._reduce_ops()
        return {"min_val": "min", "max_val": "max", "sse": "sum", "n_out": "sum"}

    def reduce_grid(self):
        return {} if self.blocked else super().reduce_grid()

    def _config(self):
        return {} if self.blocked else super()._config()

    def _state(self):
        if not self.blocked:
            return super()._state()
        return {"min_val": self.bmin, "max_val": self.bmax, "sse": self.sse, "n_out": self.n_out}

    def _load_state(self, state):
        if not self.blocked:
            return super()._load_state(state)
        self._cached = None
        self.bmin, self.bmax = state["min_val"].float(), state["max_val"].float()
        self.sse, self.n_out = state["sse"].double(), state["n_out"].double()
