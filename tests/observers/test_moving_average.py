"""moving_average: EMA of min/max, first batch initialises; what merge promises."""

from __future__ import annotations

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.errors import ConfigError
from lowbit.observers import make_observer
from lowbit.observers.moving_average import MovingAverageObserver
from lowbit.types import PerChannel, PerGroup, PerTensor, PerToken


def _batches(seed: int, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 16, generator=g) * (1 + i) for i in range(n)]


@pytest.mark.parametrize("gran", [PerTensor(), PerChannel(0), PerGroup(4), PerToken()], ids=repr)
def test_ema_formula(gran):
    c = 0.25
    obs = MovingAverageObserver(QuantSpec(method="ema", scheme="affine", granularity=gran), c)
    ref = make_observer(QuantSpec(method="minmax", scheme="affine", granularity=gran))
    lo = hi = None
    for x in _batches(0):
        obs.update(x)
        mm = make_observer(QuantSpec(method="minmax", scheme="affine", granularity=gran))
        mm.update(x)
        blo, bhi = mm.min_val.double(), mm.max_val.double()
        lo = blo if lo is None else lo + c * (blo - lo)
        hi = bhi if hi is None else hi + c * (bhi - hi)
        ref.update(x)
    got_lo, got_hi = obs.clip_range()
    assert torch.allclose(got_lo.reshape(-1), lo.clamp(max=0).float(), rtol=0, atol=1e-6)
    assert torch.allclose(got_hi.reshape(-1), hi.clamp(min=0).float(), rtol=0, atol=1e-6)
    assert obs.n_batches == 5


def test_first_batch_initialises_and_default_constant():
    x = _batches(1, 1)[0]
    obs = make_observer(QuantSpec(method="moving_average"))
    assert obs.c == 0.01
    obs.update(x)
    mm = make_observer(QuantSpec(method="minmax"))
    mm.update(x)
    assert torch.equal(obs.clip_range()[1], mm.clip_range()[1]), "one batch = its own range"


def test_constant_one_keeps_the_last_batch():
    obs = MovingAverageObserver(QuantSpec(method="ema"), averaging_constant=1.0)
    for x in _batches(2):
        obs.update(x)
    assert float(obs.clip_range()[1]) == pytest.approx(float(x.abs().max()), abs=1e-6)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, True, "0.1", None])
def test_bad_averaging_constant(bad):
    with pytest.raises(ConfigError, match=r"averaging_constant=.* allowed a number in \(0, 1\]"):
        MovingAverageObserver(QuantSpec(method="ema"), averaging_constant=bad)


def test_merge_is_a_batch_weighted_average_and_symmetric():
    spec = QuantSpec(method="ema", scheme="affine", granularity=PerChannel(0))
    xs = _batches(3, 6)
    a, b, a2, b2 = (make_observer(spec) for _ in range(4))
    for x in xs[:4]:
        a.update(x)
        a2.update(x)
    for x in xs[4:]:
        b.update(x)
        b2.update(x)
    expected_lo = (4 * a.min_val + 2 * b.min_val) / 6
    expected_hi = (4 * a.max_val + 2 * b.max_val) / 6
    a.merge(b)
    b2.merge(a2)
    assert torch.equal(a.min_val, expected_lo) and torch.equal(a.max_val, expected_hi)
    assert torch.allclose(a.min_val, b2.min_val, rtol=0, atol=1e-12), "merge is symmetric"
    assert a.n_batches == 6 and a.n_seen == sum(x.numel() for x in xs)
    lo_a, lo_b = a2.min_val, b.min_val
    assert bool(((a.min_val >= torch.minimum(lo_a, lo_b)) &
                 (a.min_val <= torch.maximum(lo_a, lo_b))).all()), "lies between the two"


def test_merging_a_copy_changes_nothing():
    spec = QuantSpec(method="ema")
    a, b = make_observer(spec), make_observer(spec)
    for x in _batches(4):
        a.update(x)
    b.load_state_dict(a.state_dict())
    before = a.clip_range()
    a.merge(b)
    assert torch.allclose(a.clip_range()[1], before[1], rtol=1e-12, atol=0)


def test_merge_needs_the_same_constant():
    a = MovingAverageObserver(QuantSpec(method="ema"), 0.01)
    b = MovingAverageObserver(QuantSpec(method="ema"), 0.5)
    with pytest.raises(ConfigError, match="merge only observers built from the same QuantSpec"):
        a.merge(b)


def test_sat_ratio_counts_values_outside_the_running_range():
    obs = MovingAverageObserver(QuantSpec(method="ema", scheme="affine"), averaging_constant=0.5)
    obs.update(torch.tensor([-1.0, 0.0, 1.0]))        # range [-1, 1]: nothing outside
    obs.update(torch.tensor([-3.0, 0.5, 3.0]))        # range moves to [-2, 2]: 2 outside
    assert obs.sat_ratio == pytest.approx(2 / 6)
