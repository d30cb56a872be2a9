"""Range searches on a :class:`~lowbit.observers.histogram.Histogram`: percentile,
quantization-MSE scoring and the entropy (KL) threshold.

All functions are pure: histogram (and exact extremes) in, numbers out.  The
quantization error of a histogram is evaluated assuming values are spread
uniformly inside each bin, integrated exactly over the grid's rounding sawtooth
and its clipping tails, so it stays accurate when a grid step spans few bins.
"""

from __future__ import annotations

import torch

from ..primitives.affine import qparams_from_range
from ..types import QType, Scheme
from .histogram import Histogram

MSE_CANDIDATES = 100          # clipping ratios k/100, k = 1..100 (1.0 = min-max)
KL_START_BINS = 128           # TensorRT: the smallest threshold is 128 bins


def clip_ratios(n: int = MSE_CANDIDATES) -> torch.Tensor:
    """Candidate clipping ratios ``k/n`` for ``k = 1..n``; the last is exactly 1.0."""
    return torch.arange(1, n + 1, dtype=torch.float64) / n


# ---------------------------------------------------------------------- percentile


def percentile(hist: Histogram, p: float) -> float:
    """Value below which ``p`` percent of the counts lie, interpolated inside a bin."""
    total = hist.total
    cum = torch.cumsum(hist.counts, 0)
    target = total * p / 100.0
    i = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64))[0])
    i = min(i, hist.bins - 1)
    lo_edges, _ = hist.edges()
    below = float(cum[i - 1]) if i > 0 else 0.0
    inside = float(hist.counts[i])
    frac = 0.0 if inside <= 0 else min(max((target - below) / inside, 0.0), 1.0)
    return float(lo_edges[i]) + frac * hist.width


# ---------------------------------------------------------------------- error model


def _sawtooth_integral(u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Antiderivative of ``(t - s*round(t/s))**2``: ``k s^3/12 + (r^3 + s^3/8)/3``."""
    k = torch.floor(u / s + 0.5)
    r = u - k * s
    return k * s ** 3 / 12.0 + (r ** 3 + s ** 3 / 8.0) / 3.0


def grid_bounds(lo: torch.Tensor, hi: torch.Tensor, qtype: QType,
                scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(scale, lowest, highest)`` representable values of the grid fitted to ``[lo, hi]``."""
    qp = qparams_from_range(lo.float(), hi.float(), qtype, scheme, tuple(lo.shape))
    s = qp.scale.double()
    z = qp.zero_point.double()
    return s, (qtype.qmin - z) * s, (qtype.qmax - z) * s


def expected_sq_error(hist: Histogram, scale: torch.Tensor, low: torch.Tensor,
                      high: torch.Tensor) -> torch.Tensor:
    """Total squared quantization error of the histogram's values for each candidate grid.

    ``scale``, ``low``, ``high``: ``(n_cand,)`` float64 step and lowest/highest grid value.
    Values of each bin are taken as uniform over the bin.  Returns ``(n_cand,)``.
    """
    a, b = hist.edges()                                  # (bins,)
    keep = hist.counts > 0
    a, b, n = a[keep][None, :], b[keep][None, :], hist.counts[keep][None, :]
    s, lo, hi = scale[:, None], low[:, None], high[:, None]  # (cand, 1)
    # below the grid: error lo - u on [a, min(b, lo)]
    m = torch.minimum(b, lo)
    below = torch.where(a < lo, ((lo - a) ** 3 - (lo - m) ** 3) / 3.0, 0.0)
    # above the grid: error u - hi on [max(a, hi), b]
    mm = torch.maximum(a, hi)
    above = torch.where(b > hi, ((b - hi) ** 3 - (mm - hi) ** 3) / 3.0, 0.0)
    # inside: rounding sawtooth on [max(a, lo), min(b, hi)]
    u0, u1 = torch.maximum(a, lo), torch.minimum(b, hi)
    inside = torch.where(u1 > u0, _sawtooth_integral(u1, s) - _sawtooth_integral(u0, s), 0.0)
    return ((below + above + inside) * (n / (b - a))).sum(dim=1)


def outside_count(hist: Histogram, lo: float, hi: float) -> float:
    """Counts outside ``[lo, hi]`` (a bin straddling a bound counts pro rata)."""
    a, b = hist.edges()
    w = b - a
    frac = ((b - torch.clamp(a, min=hi)).clamp(min=0) + (torch.clamp(b, max=lo) - a).clamp(min=0)) / w
    return float((hist.counts * frac.clamp(max=1.0)).sum())


# ---------------------------------------------------------------------- mse


def blocked_sq_errors(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qtype: QType,
                      scheme: Scheme, n: int = MSE_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block squared error and clipped-value count of ``x`` for every ratio.

    ``x`` is ``(blocks, elems)``; ``lo``/``hi`` ``(blocks,)`` is each block's grid range
    at ratio 1.  Candidate ``j`` uses ``[r_j*lo, r_j*hi]`` with ``r`` from
    :func:`clip_ratios`.  Returns two ``(blocks, n)`` float64 tensors.
    """
    sse = torch.empty(x.shape[0], n, dtype=torch.float64)
    n_out = torch.empty(x.shape[0], n, dtype=torch.float64)
    qmin, qmax = float(qtype.qmin), float(qtype.qmax)
    for j, r in enumerate(clip_ratios(n).tolist()):
        qp = qparams_from_range(lo * r, hi * r, qtype, scheme, tuple(lo.shape))
        s, z = qp.scale[:, None], qp.zero_point[:, None].float()     # (blocks, 1)
        q = torch.round(x * (1.0 / s)) + z                            # (blocks, elems)
        n_out[:, j] = ((q < qmin) | (q > qmax)).sum(dim=1).double()
        err = q.clamp_(qmin, qmax).sub_(z).mul_(s).sub_(x)
        sse[:, j] = err.double().pow_(2).sum(dim=1)
    return sse, n_out


# ---------------------------------------------------------------------- entropy


def kl_threshold(hist: Histogram, levels: int, start: int = KL_START_BINS) -> tuple[int, torch.Tensor]:
    """TensorRT-style entropy calibration on a histogram of ``|x|`` (``signed=False``).

    For each candidate threshold ``i`` (bins kept), the reference ``P`` is the first
    ``i`` bins with the outliers beyond folded into bin ``i-1``.  The candidate ``Q``
    quantizes the clipped bins (without the outliers, as TensorRT does: folding them
    in would make ``Q == P`` whenever a level is one bin wide) into ``levels`` groups
    of ``i // levels`` bins (the last group takes the rest) and spreads each group's
    mass over the bins where ``P`` is non-zero.  With ``N = sum P`` and ``M = sum Q``,
    every candidate is evaluated at once from prefix sums::

        KL_i = (sum_b P_b log P_b - sum_j G_j log(G'_j / nz_j)) / N + log(M / N)

    where ``G_j`` is group ``j``'s mass in P, ``G'_j`` in Q and ``nz_j`` its number of
    bins with ``P > 0``; a group whose only mass is outliers gets ``G'_j = 1e-4`` of a
    count (smoothing: Q must be positive wherever P is, and the penalty stays finite).  Bin 0 (the ReLU zero spike) is
    removed from both P and Q so that it cannot dominate.

    Returns ``(i*, KL)`` with KL over candidates ``max(start, levels)..m``, ``m`` the
    last non-empty bin + 1; ``i* = m`` (no clipping) when there is nothing to search.
    """
    nonzero = torch.nonzero(hist.counts).reshape(-1)
    m = int(nonzero[-1]) + 1 if nonzero.numel() else 1
    first = max(start, levels)
    h = hist.counts[:m].clone()
    h[0] = 0.0
    if m <= first or float(h.sum()) <= 0:
        return m, torch.zeros(0, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    hc = torch.cat([zero, torch.cumsum(h, 0)])                                 # (m+1,)
    nzc = torch.cat([zero, torch.cumsum((h > 0).double(), 0)])                 # (m+1,)
    plogp = torch.cat([zero, torch.cumsum(torch.xlogy(h, h), 0)])              # (m+1,)
    total = float(hc[-1])                                                      # N
    i = torch.arange(first, m + 1, dtype=torch.int64)                          # (C,)
    tail = total - hc[i]                                                       # (C,) outliers
    last = h[i - 1] + tail                                                     # P_{i-1}
    a_term = plogp[i - 1] + torch.xlogy(last, last)                            # sum P log P
    mb = torch.div(i, levels, rounding_mode="floor")                           # bins per level
    j = torch.arange(levels, dtype=torch.int64)
    starts = j[None, :] * mb[:, None]                                          # (C, L)
    ends = torch.where(j[None, :] == levels - 1, i[:, None], starts + mb[:, None])
    g_q = hc[ends] - hc[starts]                                                # G'_j (C, L)
    g_p = g_q.clone()
    g_p[:, -1] += tail                                                         # G_j
    nz = nzc[ends] - nzc[starts]
    nz[:, -1] += ((h[i - 1] == 0) & (last > 0)).double()                       # outlier-only bin
    g_q = torch.where((g_q <= 0) & (g_p > 0), torch.full_like(g_q, 1e-4), g_q)  # smoothing
    b_term = torch.where(g_p > 0, g_p * torch.log(g_q / nz.clamp(min=1.0)), 0.0).sum(dim=1)
    kl = (a_term - b_term) / total + torch.log(g_q.sum(dim=1) / total)
    best = int(torch.argmin(kl))
    return int(i[best]), kl


def kl_levels(qtype: QType) -> int:
    """Quantization levels on one side of zero: 128 for int8, 256 for uint8."""
    return 1 << (qtype.bits - 1) if qtype.signed else 1 << qtype.bits

