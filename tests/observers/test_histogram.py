"""The canonical growing histogram: exact counts, exact growth, exact merge."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import CheckpointError, ConfigError
from lowbit.observers.histogram import MIN_EXP, Histogram, range_exponent


def _direct(x: torch.Tensor, bins: int, signed: bool, exp: int) -> torch.Tensor:
    """Reference: histc of floor(x / w) at a given range (w a power of two)."""
    width = (2.0 if signed else 1.0) * 2.0 ** exp / bins
    k = torch.floor(x.double() / width)
    lo, hi = (-bins // 2, bins // 2) if signed else (0, bins)
    k = k.clamp(max=hi - 1)                       # the top edge goes into the last bin
    return torch.histc(k, bins=bins, min=lo, max=hi).double()


@pytest.mark.parametrize("amax,exp", [(0.0, MIN_EXP), (1.0, 0), (1.5, 1), (0.125, -3),
                                      (3.0, 2), (2.0 ** -120, MIN_EXP)])
def test_range_exponent(amax, exp):
    assert range_exponent(amax) == exp


@pytest.mark.parametrize("signed", [False, True])
def test_counts_match_direct_binning(signed):
    torch.manual_seed(0)
    x = torch.randn(50_000) * 3
    edges = torch.tensor([0.0, 8.0, 8 * 1023 / 1024, 1e-30, 2.0, 0.00390625])
    x = torch.cat([x, edges, -edges]) if signed else torch.cat([x.abs(), edges])
    h = Histogram(2048, signed)
    h.add(x, float(x.abs().max()))
    assert h.exp == 4
    assert torch.equal(h.counts, _direct(x, 2048, signed, 4))
    assert h.total == x.numel()


@pytest.mark.parametrize("signed", [False, True])
def test_growth_is_exact(signed):
    torch.manual_seed(1)
    xs = [torch.randn(5000) * s for s in (0.01, 1.0, 0.5, 300.0, 2.0, 1e5)]
    xs = xs if signed else [x.abs() for x in xs]
    h = Histogram(1024, signed)
    for x in xs:
        h.add(x, float(x.abs().max()))
    everything = torch.cat(xs)
    assert h.exp == range_exponent(float(everything.abs().max()))
    assert torch.equal(h.counts, _direct(everything, 1024, signed, h.exp)), \
        "merging bins while the range doubles must equal binning everything at the end"


@pytest.mark.parametrize("signed", [False, True])
def test_merge_rebins_to_the_wider_range_exactly(signed):
    torch.manual_seed(2)
    small = [torch.randn(3000) * 0.2 for _ in range(2)]
    large = [torch.randn(3000) * 40 for _ in range(2)]
    if not signed:
        small, large = [x.abs() for x in small], [x.abs() for x in large]

    def fed(xs):
        h = Histogram(512, signed)
        for x in xs:
            h.add(x, float(x.abs().max()))
        return h

    one = fed(small + large)
    for first, second in ((small, large), (large, small)):
        a, b = fed(first), fed(second)
        assert a.exp != b.exp, "the two shards must have different ranges"
        a.merge(b)
        assert a.exp == one.exp and torch.equal(a.counts, one.counts)


def test_folded_is_the_histogram_of_abs():
    torch.manual_seed(3)
    x = torch.randn(20_000)
    h = Histogram(256, signed=True)
    h.add(x, float(x.abs().max()))
    f = h.folded()
    assert f.width == h.width and not f.signed
    assert torch.equal(f.counts, _direct(x.abs(), 256, False, f.exp))


def test_memory_is_bounded():
    h = Histogram(2048)
    for i in range(30):
        x = torch.rand(10_000) * (i + 1)
        h.add(x, float(x.max()))
    assert h.counts.numel() == 2048 and h.total == 300_000


@pytest.mark.parametrize("bins", [0, 100, 8, 2048.0, True])
def test_bins_must_be_a_power_of_two(bins):
    with pytest.raises(ConfigError, match="a power of two >= 16"):
        Histogram(bins)


def test_merge_needs_matching_settings():
    with pytest.raises(ConfigError, match="merge histograms built with the same settings"):
        Histogram(256).merge(Histogram(512))


def test_state_round_trip_and_bad_bins():
    h = Histogram(64)
    h.add(torch.tensor([0.5, 1.5]), 1.5)
    g = Histogram(64)
    g.load(h.state("h."), "h.")
    assert g.exp == h.exp and torch.equal(g.counts, h.counts)
    empty = Histogram(64)
    g.load(empty.state("h."), "h.")
    assert g.exp is None, "an empty histogram stays empty through its state"
    with pytest.raises(CheckpointError, match="build it with the same bins"):
        Histogram(128).load(h.state("h."), "h.")
