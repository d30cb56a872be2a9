"""Histogram searches: percentile, the error model, the vectorised KL search."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.observers.histogram import Histogram
from lowbit.observers.search import (KL_START_BINS, blocked_sq_errors, clip_ratios,
                                     expected_sq_error, grid_bounds, kl_levels,
                                     outside_count, percentile)
from lowbit.primitives.affine import fake_quantize, qparams_from_range
from lowbit.types import QType, Scheme, int4, int8, uint8


def _hist(x: torch.Tensor, bins: int = 2048, signed: bool = False) -> Histogram:
    h = Histogram(bins, signed)
    h.add(x, float(x.abs().max()))
    return h


def test_clip_ratios_end_at_exactly_one():
    r = clip_ratios()
    assert r.numel() == 100 and float(r[-1]) == 1.0 and float(r[0]) == 0.01


@pytest.mark.parametrize("p", [50.0, 90.0, 99.0, 99.99])
def test_percentile_is_within_a_bin_of_the_exact_quantile(p):
    torch.manual_seed(0)
    x = torch.randn(100_000).abs()
    h = _hist(x)
    exact = float(torch.quantile(x.double(), p / 100.0))
    assert abs(percentile(h, p) - exact) <= h.width, "interpolation error is below one bin"


def test_percentile_interpolates_linearly_inside_a_bin():
    h = Histogram(16)
    h.exp = 4                                     # [0, 16], width 1
    h.counts[3] = 10.0                            # ten values spread over [3, 4)
    assert percentile(h, 50.0) == pytest.approx(3.5)
    assert percentile(h, 100.0) == pytest.approx(4.0)


def test_grid_bounds():
    s, low, high = grid_bounds(torch.tensor([-1.0]), torch.tensor([1.0]), int8, Scheme.SYMMETRIC)
    assert float(high) == pytest.approx(1.0) and float(low) == pytest.approx(-128 / 127)
    s, low, high = grid_bounds(torch.tensor([-1.0]), torch.tensor([3.0]), uint8, Scheme.AFFINE)
    assert float(low) == pytest.approx(-1.0, abs=float(s)) and float(high) == pytest.approx(3.0, abs=float(s))


@pytest.mark.parametrize("qtype,ratio", [(int8, 1.0), (int8, 0.3), (int4, 0.5), (int4, 1.0)])
def test_error_model_matches_real_quantization(qtype, ratio):
    """Uniform-in-bin error model vs quantizing the samples; 3% tolerance because the
    density is not exactly uniform inside each bin and the samples are finite."""
    torch.manual_seed(1)
    x = torch.randn(400_000)
    h = _hist(x, signed=True)
    amax = float(x.abs().max()) * ratio
    lo, hi = torch.tensor([-amax], dtype=torch.float64), torch.tensor([amax], dtype=torch.float64)
    est = float(expected_sq_error(h, *grid_bounds(lo, hi, qtype, Scheme.SYMMETRIC)))
    qp = qparams_from_range(lo.float(), hi.float(), qtype, Scheme.SYMMETRIC, (x.numel(),))
    real = float(((fake_quantize(x, qp) - x).double() ** 2).sum())
    assert est == pytest.approx(real, rel=0.03)


def test_outside_count():
    h = Histogram(16)
    h.exp = 4
    h.counts[:] = 1.0
    assert outside_count(h, -math.inf, 10.0) == pytest.approx(6.0)
    assert outside_count(h, 2.5, 10.5) == pytest.approx(2.5 + 5.5)


def test_blocked_errors_match_fake_quantize():
    torch.manual_seed(2)
    x = torch.randn(3, 50)
    lo, hi = -x.abs().amax(1), x.abs().amax(1)
    sse, n_out = blocked_sq_errors(x, lo, hi, int8, Scheme.SYMMETRIC, n=10)
    for j, r in enumerate(clip_ratios(10).tolist()):
        qp = qparams_from_range((lo * r)[:, None], (hi * r)[:, None], int8, Scheme.SYMMETRIC, (1, 50))
        ref = ((fake_quantize(x, qp) - x).double() ** 2).sum(1)
        assert torch.allclose(sse[:, j], ref, rtol=1e-6, atol=1e-12)
        # a value falls off the grid when x/s rounds beyond [qmin, qmax] (no ties in randn)
        t = x / qp.scale + qp.zero_point
        outside = ((t > int8.qmax + 0.5) | (t < int8.qmin - 0.5)).sum(1).double()
        assert torch.equal(n_out[:, j], outside), (r, n_out[:, j], outside)
    assert n_out[:, 0].sum() > 0, "the smallest ratio clips something"


def test_kl_levels():
    assert kl_levels(int8) == 128 and kl_levels(uint8) == 256 and kl_levels(int4) == 8
    assert kl_levels(QType(16, False)) == 65536
