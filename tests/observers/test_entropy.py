"""entropy (KL): floors on the quality fixtures, the search itself, unsigned levels, affine use."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.observers import make_observer
from lowbit.observers.entropy import kl_search, occupied_view
from lowbit.observers.histogram import Histogram, range_exponent


def test_relu_on_the_unsigned_grid(quality_table):
    """ReLU-Gaussian on the unsigned grid: entropy must clip (beat minmax, which keeps the
    isolated largest samples) and come within 0.3 dB of the MSE search, the best clip any
    method here finds.  Both sides are computed on the machine at hand; the absolute floor
    (45.8 dB) only guards against a gross regression, well below the 46.0 dB the method
    reaches, so that one histogram bin more or less in another CPU's float sums cannot fail it."""
    row = quality_table["relu_uint8"]
    assert row["entropy"] > row["minmax"], "entropy must clip the isolated largest samples"
    assert row["entropy"] >= row["mse"] - 0.3, row
    assert row["entropy"] >= 45.8, f"entropy on ReLU/uint8: {row['entropy']:.3f} dB"


@pytest.mark.parametrize("fixture,floor", [("gauss_int8", 40.0), ("laplace_int8", 35.0)])
def test_signed_floors(quality_table, fixture, floor):
    got = quality_table[fixture]["entropy"]
    assert got >= floor, f"entropy on {fixture}: {got:.3f} dB < {floor}"


@pytest.mark.parametrize("fixture", ["gauss_int8", "laplace_int8", "gauss_int4"])
def test_clipping_beats_minmax_on_signed_data(quality_table, fixture):
    row = quality_table[fixture]
    assert row["entropy"] > row["minmax"], "KL must find a useful clip on bell-shaped data"


# ---------------------------------------------------------------------- the search


def _plain_kl(h: torch.Tensor, levels: int, start: int) -> list[float]:
    """KL(P || Q) for every candidate, written as a loop from the module docstring."""
    h = h.double()
    kls = []
    for i in range(max(start, levels), h.numel() + 1):
        p = h[:i].clone()
        p[i - 1] += h[i:].sum()
        q = torch.zeros(i, dtype=torch.float64)
        for j in range(levels):
            a, b = -(-j * i // levels), -(-(j + 1) * i // levels)    # ceil(j i / L)
            support = p[a:b] > 0
            mass = float(h[a:b].sum())
            if support.any():
                q[a:b][support] = (mass if mass > 0 else 1e-4) / float(support.sum())
        pn, qn = p / p.sum(), q / q.sum()
        keep = pn > 0
        kls.append(float((pn[keep] * torch.log(pn[keep] / qn[keep])).sum()))
    return kls


@pytest.mark.parametrize("levels", [16, 24, 32])
def test_vectorised_search_equals_a_plain_loop(levels):
    """Fractional counts (as in the re-binned view), an empty stretch and an
    outlier-only top group; 24 levels takes the non-power-of-two path."""
    torch.manual_seed(3)
    x = torch.randn(20_000).abs()
    h = torch.histc(x, 400, 0, float(x.max())).double()
    h[::7] *= 0.3
    h[350:390] = 0.0
    i_fast, kl_fast = kl_search(h, levels, start=40)
    kl_slow = _plain_kl(h, levels, 40)
    slow = torch.tensor(kl_slow, dtype=torch.float64)
    assert torch.allclose(kl_fast, slow, rtol=1e-8, atol=1e-11)
    assert i_fast == max(40, levels) + min(range(len(kl_slow)), key=kl_slow.__getitem__)


@pytest.mark.parametrize("levels", [64, 128])
@pytest.mark.parametrize("shape", ["linear", "half_normal"])
def test_kl_has_no_saw_tooth(levels, shape):
    """Level groups differ by at most one bin.  The TensorRT/MXNet split (``i // L``
    bins each, the remainder to the last group) made the top level up to twice as
    wide: KL(i) jumped at every multiple of L, with a local minimum in each period,
    which pinned the answer to multiples of L bins (on the old uint8 search, in the
    window that matters: 7/8 of the range or all of it)."""
    b = torch.arange(1024, dtype=torch.float64)
    h = 1000.0 - 0.97 * b if shape == "linear" else 1e7 * torch.exp(-0.5 * (b / 250.0) ** 2)
    _, kl = kl_search(h, levels)
    step = torch.diff(kl)
    local_minima = int(((step[:-1] < 0) & (step[1:] > 0)).sum())
    assert local_minima <= 1, f"{local_minima} local minima in KL(i)"
    assert float(step.max()) < 1e-4, "no upward jumps of KL(i)"


def _expected_half_normal(scale: float, cut: float = 6.0, bins: int = 2048, n: float = 1e8):
    """A streamed histogram holding the expected counts of |N(0, scale^2)| below cut * scale."""
    amax = cut * scale
    h = Histogram(bins)
    h.exp = range_exponent(amax)
    edges = torch.arange(bins + 1, dtype=torch.float64) * h.width
    h.counts = n * torch.diff(torch.erf(edges.clamp(max=amax) / (scale * math.sqrt(2.0))))
    return h, amax


@pytest.mark.parametrize("levels", [128, 256])
def test_threshold_does_not_depend_on_the_power_of_two_range(levels):
    """KL is not resolution-free, so it must run on a fixed geometry: 2048 bins over
    [0, amax], as on an exact histogram.  Rescaling the data moves amax inside its
    power-of-two range (50%..100% occupancy); the old search ran on the raw range and
    its threshold moved by up to 10%."""
    edges = torch.arange(2049, dtype=torch.float64) * 6.0 / 2048
    exact = 1e8 * torch.diff(torch.erf(edges / math.sqrt(2.0)))
    exact[0] = exact[1]
    t_exact = kl_search(exact, levels)[0] * 6.0 / 2048          # ~4.82 (128), ~5.10 (256)
    for j in range(8):
        scale = 2.0 ** (j / 8)
        h, amax = _expected_half_normal(scale)
        t = kl_search(occupied_view(h, amax, 2048), levels)[0] * amax / 2048 / scale
        assert t == pytest.approx(t_exact, rel=0.025), f"x{scale:.3f}: {t:.3f} vs {t_exact:.3f}"


def test_view_keeps_every_count_and_follows_an_exact_histogram():
    torch.manual_seed(5)
    x = torch.rand(400_000, dtype=torch.float64).sqrt() * 5.3      # density rising to 5.3
    h = Histogram(2048)
    h.add(x, float(x.max()))                                      # range 8: 66% occupied
    amax = float(x.max())
    view = occupied_view(h, amax, 2048)
    assert float(view.sum()) == pytest.approx(float(h.counts[1:].sum() + h.counts[1]), rel=1e-12)
    exact = torch.histc(x, 2048, 0, amax)
    exact[0] = exact[1]
    gap = (torch.cumsum(view, 0) - torch.cumsum(exact, 0)).abs().max()
    assert float(gap) <= float(h.counts.max()), "off by less than one source bin anywhere"


def test_zero_spike_does_not_move_the_threshold():
    torch.manual_seed(4)
    pos = torch.randn(50_000).abs()
    out = []
    for zeros in (10, 500_000):
        obs = make_observer(QuantSpec(qtype="uint8", method="entropy"))
        obs.update(torch.cat([pos, torch.zeros(zeros)]))
        obs.qparams()
        out.append(obs.summary()["threshold"])
    assert out[0] == out[1]


def test_merged_observers_choose_what_one_stream_chooses():
    torch.manual_seed(6)
    xs = [torch.randn(30_000) * s for s in (0.3, 1.0, 5.0)]     # three different ranges
    one, a, b = (make_observer(QuantSpec(method="entropy")) for _ in range(3))
    for x in xs:
        one.update(x)
    a.update(xs[0])
    b.update(xs[1])
    b.update(xs[2])
    a.merge(b)
    assert a.summary() == one.summary()


# ---------------------------------------------------------------------- grids


def test_search_uses_tensorrts_128_levels_on_either_grid():
    """128 candidate levels for 8 bits (TensorRT); the unsigned grid still spans [0, T]."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, generator=g).clamp(min=0)
    u = make_observer(QuantSpec(qtype="uint8", method="kl"))
    s = make_observer(QuantSpec(qtype="int8", method="kl"))
    u.update(x)
    s.update(x)
    assert u.summary()["levels"] == 128 and s.summary()["levels"] == 128
    assert float(u.clip_range()[0]) == 0.0


def test_more_levels_than_bins_keeps_the_full_range():
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(2))
    obs = make_observer(QuantSpec(qtype="int12", method="entropy"))    # 2048 levels
    obs.update(x)
    assert float(obs.clip_range()[1]) == pytest.approx(float(x.abs().max()), rel=1e-6)


def test_affine_clip_stays_inside_the_observed_range():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50_000, generator=g) + 0.5
    obs = make_observer(QuantSpec(method="entropy", scheme="affine"))
    obs.update(x)
    lo, hi = obs.clip_range()
    assert float(x.min()) <= float(lo) <= 0.0 <= float(hi) <= float(x.max())
    s = obs.summary()
    assert s["threshold"] < float(x.abs().max()), "a Gaussian's tail is clipped"
    assert s["threshold"] == pytest.approx(s["threshold_bins"] * float(x.abs().max()) / s["bins"])
    assert float(hi) <= s["threshold"] and float(-lo) <= s["threshold"] + 1e-6, \
        "the range is the KL threshold on |x|"
