"""``auto``: try several range finders on the same data and keep the best one.

The candidates ``minmax``, ``percentile:99.99``, ``mse`` and ``entropy`` all read
one shared histogram (bounded memory) plus the exact extremes.  At ``qparams()``
each candidate's range is scored by the estimated squared quantization error of
all observed values on that histogram (an exact within-bin error model, see
:func:`~lowbit.observers.search.expected_sq_error`); the lowest wins, and
``summary()`` records ``chosen``, every candidate's ``scores`` (estimated MSE per
value) and a sentence ``reason``.  Ties go to the earlier (simpler) candidate.
Per-tensor only.
"""

from __future__ import annotations

import torch

from .entropy import entropy_range
from .hist_base import DEFAULT_BINS, HistogramObserver
from .mse import mse_range
from .percentile import percentile_range
from .registry import register_observer

AUTO_PERCENTILE = 99.99
CANDIDATES = ("minmax", f"percentile:{AUTO_PERCENTILE:g}", "mse", "entropy")


@register_observer("auto")
class AutoObserver(HistogramObserver):
    """Best of minmax / percentile / mse / entropy by estimated quantization MSE."""

    def __init__(self, spec, bins: int = DEFAULT_BINS):
        super().__init__(spec, bins)
        self.chosen = ""
        self.scores: dict[str, float] = {}
        self.ranges: dict[str, tuple[float, float]] = {}

    def _candidate_ranges(self) -> dict[str, tuple[float, float]]:
        lo_m, hi_m, _, _ = mse_range(self)
        lo_e, hi_e, _ = entropy_range(self)
        return {"minmax": self._minmax_range(),
                CANDIDATES[1]: percentile_range(self, AUTO_PERCENTILE),
                "mse": (lo_m, hi_m),
                "entropy": (lo_e, hi_e)}

    def _choose_range(self):
        self.ranges = self._candidate_ranges()
        names = list(self.ranges)
        lo = torch.tensor([self.ranges[n][0] for n in names], dtype=torch.float64)
        hi = torch.tensor([self.ranges[n][1] for n in names], dtype=torch.float64)
        err = self._score(lo, hi) / max(self.n_seen, 1)
        self.scores = {n: float(e) for n, e in zip(names, err)}
        self.chosen = names[int(torch.argmin(err))]
        return self.ranges[self.chosen]

    def reason(self) -> str:
        """Why the chosen candidate won, in one sentence."""
        ranked = sorted(self.scores.items(), key=lambda kv: kv[1])
        others = ", ".join(f"{n} {v:.4g}" for n, v in ranked if n != self.chosen)
        return (f"{self.chosen} has the lowest estimated quantization MSE per value "
                f"({self.scores[self.chosen]:.4g}) on the observed histogram of "
                f"{self.n_seen} values; others: {others}")

    def _summary_extra(self):
        return {"chosen": self.chosen, "scores": dict(self.scores), "reason": self.reason(),
                "candidates": {n: [float(a), float(b)] for n, (a, b) in self.ranges.items()}}
