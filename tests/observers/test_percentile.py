"""percentile: bounded-memory streaming percentile, quality floors, exact merge."""

from __future__ import annotations

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.observers import make_observer


def _stream(seed: int, n: int = 8, size: int = 5000):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=g) * (0.5 + i) for i in range(n)]


@pytest.mark.parametrize("fixture,floor", [("gauss_int8", 40.0), ("laplace_int8", 35.0)])
def test_quality_floor(quality_table, fixture, floor):
    got = quality_table[fixture]["percentile:99.99"]
    assert got >= floor, f"percentile:99.99 on {fixture}: {got:.3f} dB < {floor} dB"


@pytest.mark.parametrize("p", [90.0, 99.0, 99.99])
def test_symmetric_clip_is_the_percentile_of_abs(p):
    xs = _stream(0)
    obs = make_observer(QuantSpec(method=f"percentile:{p}"))
    for x in xs:
        obs.update(x)
    a = torch.cat(xs).abs().double()
    exact = float(torch.quantile(a, p / 100.0))
    width = obs.hist.width
    lo, hi = obs.clip_range()
    assert abs(float(hi) - exact) <= width and float(lo) == -float(hi)
    assert obs.sat_ratio == pytest.approx(1.0 - p / 100.0, abs=width * 0.01 + 1e-4)


def test_affine_clips_both_tails():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100_000, generator=g) * 2 + 3
    obs = make_observer(QuantSpec(method="percentile:99", scheme="affine"))
    obs.update(x)
    lo, hi = obs.clip_range()
    width = obs.hist.width
    exp_lo, exp_hi = torch.quantile(x.double(), torch.tensor([0.01, 0.99], dtype=torch.float64))
    assert abs(float(lo) - min(float(exp_lo), 0.0)) <= width
    assert abs(float(hi) - float(exp_hi)) <= width


def test_p100_is_minmax():
    xs = _stream(2)
    p, m = make_observer(QuantSpec(method="percentile:100")), make_observer(QuantSpec())
    for x in xs:
        p.update(x)
        m.update(x)
    assert torch.equal(p.clip_range()[1], m.clip_range()[1]), "p100 never exceeds the max"


def test_memory_does_not_grow_with_samples():
    obs = make_observer(QuantSpec(method="p99"))
    obs.update(torch.randn(100))
    size = {k: v.numel() for k, v in obs.state_dict().items()}
    for x in _stream(3, n=20, size=20_000):
        obs.update(x)
    assert {k: v.numel() for k, v in obs.state_dict().items()} == size
    assert obs.n_seen == 100 + 20 * 20_000


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
def test_merge_equals_one_stream(scheme):
    xs = _stream(4)
    spec = QuantSpec(method="percentile:99.9", scheme=scheme)
    one, a, b = (make_observer(spec) for _ in range(3))
    for x in xs:
        one.update(x)
    for x in xs[::2]:
        a.update(x)
    for x in xs[1::2]:
        b.update(x)
    a.merge(b)
    sa, so = a.state_dict(), one.state_dict()
    assert all(torch.equal(sa[k], so[k]) for k in so), "counts and extremes merge exactly"
    assert torch.equal(a.qparams().scale, one.qparams().scale)
