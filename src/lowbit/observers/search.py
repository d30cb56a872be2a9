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


def kl_levels(qtype: QType) -> int:
    """Quantization levels on one side of zero: 128 for int8, 256 for uint8."""
    return 1 << (qtype.bits - 1) if qtype.signed else 1 << qtype.bits
