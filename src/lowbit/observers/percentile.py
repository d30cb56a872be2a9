"""``percentile`` (``p99``, ``percentile:99.99``, ...): clip at a percentile of the data.

Streaming with bounded memory: the values go into a fixed-size growing
histogram (:mod:`~lowbit.observers.histogram`), never kept.  SYMMETRIC grids clip
``|x|`` (or ``max(x, 0)`` on an unsigned grid) at its ``p``-th percentile;
AFFINE grids clip ``x`` to its ``[100 - p, p]`` percentiles.  The percentile is
read from the cumulative counts with linear interpolation inside the bin and
never exceeds the exact observed extremes.  Per-tensor only.
"""

from __future__ import annotations

from ..config import DEFAULT_PERCENTILE
from .hist_base import DEFAULT_BINS, HistogramObserver
from .registry import register_observer
from .search import percentile


def percentile_range(obs: HistogramObserver, p: float) -> tuple[float, float]:
    """The ``p``-percentile clipping range of a histogram observer's data."""
    hi = min(percentile(obs.hist, p), obs.max_val)
    if obs.two_sided:
        lo = max(percentile(obs.hist, 100.0 - p), obs.min_val)
        return min(lo, hi), hi
    return -hi, hi


@register_observer("percentile")
class PercentileObserver(HistogramObserver):
    """Clip at the ``p``-th percentile (``spec.method_params['p']``, default 99.99)."""

    def __init__(self, spec, bins: int = DEFAULT_BINS):
        super().__init__(spec, bins)
        self.p = float(spec.method_params.get("p", DEFAULT_PERCENTILE))

    def _choose_range(self):
        return percentile_range(self, self.p)

    def _summary_extra(self):
        return {"p": self.p, "bins": self.hist.bins}
