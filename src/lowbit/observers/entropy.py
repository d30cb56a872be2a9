"""``entropy`` (``kl``): TensorRT-style KL-divergence calibration.

The histogram of ``|x|`` (2048 bins by default, growing by exact bin merges) is
searched for the threshold whose clipped-and-quantized distribution is closest
in KL divergence to the clipped reference (see :func:`~lowbit.observers.search.kl_threshold`).
A signed grid has ``2**(bits-1)`` levels per side (128 for int8); an unsigned grid,
used after ReLU, ``2**bits`` (256 for uint8).  The zero bin is left out of P and Q
so that ReLU's zeros cannot dominate.  AFFINE grids search ``|x|`` too and clip the
observed range to ``[-T, T]``.  Per-tensor only.
"""

from __future__ import annotations

from .hist_base import DEFAULT_BINS, HistogramObserver
from .registry import register_observer
from .search import kl_levels, kl_threshold


def entropy_range(obs: HistogramObserver) -> tuple[float, float, int]:
    """``(lo, hi, bins_kept)`` of the minimum-KL threshold for a histogram observer."""
    hist = obs.hist.folded()
    i, _ = kl_threshold(hist, kl_levels(obs.qtype))
    amax = max(-obs.min_val, obs.max_val)
    t = min(i * hist.width, amax)
    if obs.two_sided:
        return max(obs.min_val, -t), min(obs.max_val, t), i
    return -t, t, i


@register_observer("entropy")
class EntropyObserver(HistogramObserver):
    """Minimum-KL clipping threshold of a streamed histogram."""

    def __init__(self, spec, bins: int = DEFAULT_BINS):
        super().__init__(spec, bins)
        self.bins_kept = 0

    def _choose_range(self):
        lo, hi, self.bins_kept = entropy_range(self)
        return lo, hi

    def _summary_extra(self):
        return {"bins": self.hist.bins, "threshold_bins": self.bins_kept,
                "levels": kl_levels(self.qtype)}
