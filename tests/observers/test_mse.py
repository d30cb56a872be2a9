"""mse: clip-ratio search; quality floors; exact per-channel search on weights."""

from __future__ import annotations

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.observers import make_observer
from lowbit.observers.search import clip_ratios
from lowbit.primitives.affine import fake_quantize, qparams_from_range
from lowbit.types import PerChannel, PerGroup, PerToken, Scheme


@pytest.mark.parametrize("fixture,floor", [("gauss_int8", 40.0), ("laplace_int8", 35.0),
                                           ("gauss_int4", 18.5), ("relu_uint8", 46.0)])
def test_quality_floor(quality_table, fixture, floor):
    got = quality_table[fixture]["mse"]
    assert got >= floor, f"mse on {fixture}: {got:.3f} dB < {floor} dB"


@pytest.mark.parametrize("fixture", ["gauss_int8", "laplace_int8", "relu_uint8", "gauss_int4"])
def test_never_below_minmax(quality_table, fixture):
    row = quality_table[fixture]
    assert row["mse"] >= row["minmax"], f"mse {row['mse']:.3f} < minmax {row['minmax']:.3f} dB"


def _weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 64, generator=g) * torch.linspace(0.1, 2.0, 8)[:, None]
    w[0, 3] = 9.0                                   # an outlier worth clipping
    return w


@pytest.mark.parametrize("scheme", [Scheme.SYMMETRIC, Scheme.AFFINE])
@pytest.mark.parametrize("qtype", ["int8", "int4"])
def test_per_channel_search_is_exact_on_a_weight(scheme, qtype):
    w = _weight()
    obs = make_observer(QuantSpec(qtype=qtype, scheme=scheme, granularity=PerChannel(0),
                                  method="mse"))
    obs.update(w)
    mm = make_observer(QuantSpec(qtype=qtype, scheme=scheme, granularity=PerChannel(0)))
    mm.update(w)
    lo1, hi1 = mm.clip_range()                        # (8, 1)
    errs = []
    for r in clip_ratios().tolist():                  # brute force, one ratio at a time
        qp = qparams_from_range(lo1 * r, hi1 * r, obs.qtype, scheme, (1, 64))
        errs.append(((fake_quantize(w, qp) - w).double() ** 2).sum(1))
    errs = torch.stack(errs, 1)                       # (8, 100)
    best = clip_ratios()[errs.argmin(1)].float()
    lo, hi = obs.clip_range()
    assert torch.equal(obs.ratio, best)
    assert torch.equal(lo, lo1 * best[:, None]) and torch.equal(hi, hi1 * best[:, None])
    q_err = ((fake_quantize(w, obs.qparams()) - w).double() ** 2).sum(1)
    m_err = ((fake_quantize(w, mm.qparams()) - w).double() ** 2).sum(1)
    assert bool((q_err <= m_err).all()), "no channel is worse than min-max"
    if qtype == "int4":
        assert float(obs.ratio.min()) < 1.0, "4-bit Gaussian rows gain from clipping"
    qp = obs.qparams()
    codes = torch.round(w * (1.0 / qp.scale)) + qp.zero_point
    clipped = (codes < obs.qtype.qmin) | (codes > obs.qtype.qmax)
    assert obs.sat_ratio == pytest.approx(float(clipped.float().mean()), abs=1e-9)


@pytest.mark.parametrize("gran", [PerGroup(16), PerToken()], ids=repr)
def test_other_granularities(gran):
    w = _weight(1)
    obs = make_observer(QuantSpec(qtype="int4", granularity=gran, method="mse"))
    obs.update(w)
    qp = obs.qparams()
    assert qp.scale.shape == tuple(n // b for n, b in zip(w.shape, gran.block_size(w.shape)))
    mm = make_observer(QuantSpec(qtype="int4", granularity=gran))
    mm.update(w)
    err = float(((fake_quantize(w, qp) - w) ** 2).sum())
    assert err <= float(((fake_quantize(w, mm.qparams()) - w) ** 2).sum())


def test_blocked_merge_equals_one_stream():
    xs = [_weight(s) for s in range(4)]
    spec = QuantSpec(granularity=PerChannel(0), method="mse")
    one, a, b = (make_observer(spec) for _ in range(3))
    for x in xs:
        one.update(x)
    for x in xs[:1]:
        a.update(x)
    for x in xs[1:]:
        b.update(x)
    a.merge(b)
    sa, so = a.state_dict(), one.state_dict()
    assert sa.keys() == so.keys()
    for k in so:
        assert torch.allclose(sa[k], so[k], rtol=1e-12, atol=0), k   # float64 sums, reordered
    assert torch.equal(a.clip_range()[1], one.clip_range()[1])


def test_summary_reports_the_ratio():
    obs = make_observer(QuantSpec(method="mse"))
    obs.update(torch.randn(10_000, generator=torch.Generator().manual_seed(5)))
    s = obs.summary()
    assert 0.0 < s["ratio"] <= 1.0 and s["est_mse"] > 0.0
    assert s["hi"] == pytest.approx(s["ratio"] * obs.max_val, rel=1e-6)
