"""``entropy`` (``kl``): TensorRT-style KL-divergence calibration, per tensor.

The observer streams the power-of-two histogram the other histogram observers use (exact
merges, bounded memory).  At ``qparams()`` time the histogram of ``|x|`` is re-binned onto
``bins`` (2048) equal bins over ``[0, amax]`` (linear interpolation of the cumulative counts:
every count kept, deterministic, so merges and checkpoints stay exact), with the zero bin
replaced by its neighbour so the number of zeros cannot move the threshold.

For each candidate threshold ``i`` (bins kept, ``128 .. bins``), ``P`` is the first ``i``
bins with the outliers folded into bin ``i-1``; ``Q`` quantizes the clipped bins into
``L = 2**(bits-1)`` groups of near-equal size (``[ceil(j i / L), ceil((j+1) i / L))``) and
spreads each group's mass over the bins where ``P`` is non-zero (``1e-4`` of a count where a
group's only mass is the folded outliers).  The threshold with the smallest ``KL(P || Q)``
wins and is applied on the qtype's own grid; AFFINE grids clip to ``[-T, T]``.  KL does not
minimise squared error: on light-tailed data it clips less than the MSE search.  The design
notes behind these choices are in ``docs/observers.md``.
"""

from __future__ import annotations

import torch

from .hist_base import DEFAULT_BINS, HistogramObserver
from .histogram import Histogram
from .registry import register_observer
from .search import KL_START_BINS

KL_SMOOTHING = 1e-4           # counts given to an outlier-only group of Q


def occupied_view(hist: Histogram, amax: float, bins: int) -> torch.Tensor:
    """Counts of an unsigned ``hist`` re-binned onto ``bins`` equal bins over ``[0, amax]``.

    ``amax`` is the exact maximum of the histogrammed values (it lies in the last
    non-empty bin, which is taken to end there).  The cumulative counts, exact at the
    source bin edges, are interpolated linearly in between (values uniform inside a
    source bin) and differenced, so every source bin keeps its count.  The first
    source bin (ReLU's zero spike, exact on any grid) is replaced by the second, as in
    pytorch-quantization: neither a spike nor a hole at the bottom of the view.
    Returns ``(bins,)`` float64, all zeros when there is nothing but zeros.
    """
    src = hist.counts.clone()
    src[0] = src[1]
    nonzero = torch.nonzero(src).reshape(-1)
    if amax <= 0.0 or nonzero.numel() == 0:
        return torch.zeros(bins, dtype=torch.float64)
    m = int(nonzero[-1]) + 1
    c = src[:m]
    knots = torch.arange(m + 1, dtype=torch.float64) * hist.width          # source edges
    knots[m] = max(amax, float(knots[m - 1]))                               # ... ending at amax
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(c, 0)])
    edges = torch.arange(bins + 1, dtype=torch.float64) * (amax / bins)
    k = (torch.searchsorted(knots, edges, right=True) - 1).clamp(0, m - 1)  # source bin
    span = (knots[k + 1] - knots[k]).clamp(min=torch.finfo(torch.float64).tiny)
    cdf = cum[k] + ((edges - knots[k]) / span).clamp(0.0, 1.0) * c[k]
    cdf[0], cdf[-1] = 0.0, cum[-1]
    return torch.diff(cdf).clamp(min=0.0)


def entropy_levels(qtype) -> int:
    """Candidate levels of the KL search: ``2**(bits-1)`` (TensorRT's 128 for 8 bits)."""
    return 1 << (qtype.bits - 1)


def kl_search(h: torch.Tensor, levels: int, start: int = KL_START_BINS) -> tuple[int, torch.Tensor]:
    """Minimum-KL number of bins to keep, for every candidate at once.

    ``h``: ``(B,)`` float64 counts on ``[0, amax]`` (zero spike already neutralised).
    Candidates are ``i = max(start, levels) .. B``; ``P``, ``Q`` and the grouping are
    as in the module docstring.  With ``N = sum P`` and ``M = sum Q``, from prefix sums::

        KL_i = (sum_b P_b log P_b - sum_j G_j log(G'_j / nz_j)) / N + log(M / N)

    where ``G_j`` is group ``j``'s mass in P, ``G'_j`` in Q (the same minus the
    outliers; ``KL_SMOOTHING`` if that leaves nothing) and ``nz_j`` its number of bins
    with ``P > 0``.  Returns ``(i*, KL)`` (the smallest ``i`` on ties); ``i* = B`` with
    an empty ``KL`` when there is nothing to search (``B <= max(start, levels)`` or
    no counts).
    """
    h = h.double()
    n = h.numel()
    first = max(start, levels)
    total = float(h.sum())
    if n <= first or total <= 0.0:
        return n, torch.zeros(0, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    hc = torch.cat([zero, torch.cumsum(h, 0)])                                  # (B+1,)
    nzc = torch.cat([zero, torch.cumsum((h > 0).double(), 0)])
    plogp = torch.cat([zero, torch.cumsum(torch.xlogy(h, h), 0)])
    i = torch.arange(first, n + 1, dtype=torch.int64)                           # (C,)
    tail = (total - hc[i]).clamp(min=0.0)                                       # outliers
    last = h[i - 1] + tail                                                      # P_{i-1}
    a_term = plogp[i - 1] + torch.xlogy(last, last)                             # sum P log P
    # group bounds ceil(j i / L), j = 0..L: (C, L+1); a shift when L is a power of two
    bounds = torch.arange(levels + 1, dtype=torch.int64)[None, :] * i[:, None] + (levels - 1)
    if levels & (levels - 1) == 0:
        bounds >>= levels.bit_length() - 1
    else:
        bounds = torch.div(bounds, levels, rounding_mode="floor")
    g = hc[bounds].diff(dim=1)                                                  # G'_j (C, L)
    nz = nzc[bounds].diff(dim=1)                                                # bins with h > 0
    # groups 0..L-2: P == Q's mass, and G' > 0 exactly where nz > 0
    b_term = torch.xlogy(g[:, :-1], g[:, :-1] / nz[:, :-1].clamp_(min=1.0)).sum(dim=1)
    # the last group also holds the outliers (in P only)
    g_q, nz_l = g[:, -1], nz[:, -1] + ((h[i - 1] <= 0) & (last > 0)).double()
    g_p = g_q + tail
    g_q = torch.where((g_q <= 0) & (g_p > 0), torch.full_like(g_q, KL_SMOOTHING), g_q)
    b_term += torch.xlogy(g_p, g_q / nz_l.clamp(min=1.0))
    q_total = hc[i] + (g_q - g[:, -1])                                          # M = sum Q
    kl = (a_term - b_term) / total + torch.log(q_total / total)
    return int(i[int(torch.argmin(kl))]), kl


def entropy_threshold(obs: HistogramObserver) -> tuple[float, int, int]:
    """``(T, i, B)``: the minimum-KL threshold on ``|x|`` in data units, as ``i`` of ``B`` bins."""
    amax = max(-obs.min_val, obs.max_val)
    bins = obs.hist.bins
    view = occupied_view(obs.hist.folded(), amax, bins)
    i, _ = kl_search(view, entropy_levels(obs.qtype))
    return (amax if i >= bins else i * (amax / bins)), i, bins


def _clipped(obs: HistogramObserver, t: float) -> tuple[float, float]:
    if obs.two_sided:
        return max(obs.min_val, -t), min(obs.max_val, t)
    return -t, t


def entropy_range(obs: HistogramObserver) -> tuple[float, float, int]:
    """``(lo, hi, bins_kept)`` of the minimum-KL threshold for a histogram observer."""
    t, i, _ = entropy_threshold(obs)
    return (*_clipped(obs, t), i)


@register_observer("entropy")
class EntropyObserver(HistogramObserver):
    """Minimum-KL clipping threshold of a streamed histogram."""

    def __init__(self, spec, bins: int = DEFAULT_BINS):
        super().__init__(spec, bins)
        self.bins_kept = 0
        self.threshold = 0.0

    def _choose_range(self):
        self.threshold, self.bins_kept, _ = entropy_threshold(self)
        return _clipped(self, self.threshold)

    def _summary_extra(self):
        return {"bins": self.hist.bins, "threshold_bins": self.bins_kept,
                "threshold": self.threshold, "levels": entropy_levels(self.qtype)}
