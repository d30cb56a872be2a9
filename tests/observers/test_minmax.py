"""minmax: exact running range per block, every granularity."""

from __future__ import annotations

import itertools

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.observers import make_observer
from lowbit.observers.minmax import grid_range
from lowbit.primitives.affine import choose_qparams
from lowbit.types import PerChannel, PerGroup, PerTensor, PerToken, Scheme

GRANULARITIES = [PerTensor(), PerChannel(0), PerChannel(1), PerGroup(4, -1), PerGroup(3, 1),
                 PerToken()]


def _reference_blocks(x: torch.Tensor, block: tuple[int, ...]):
    """Per-block (min, max) by an explicit loop over block indices."""
    grid = [range(n // b) for n, b in zip(x.shape, block)]
    lo = torch.empty([n // b for n, b in zip(x.shape, block)])
    hi = torch.empty_like(lo)
    for idx in itertools.product(*grid):
        sl = tuple(slice(i * b, (i + 1) * b) for i, b in zip(idx, block))
        lo[idx], hi[idx] = x[sl].min(), x[sl].max()
    return lo, hi


@pytest.mark.parametrize("gran", GRANULARITIES, ids=repr)
@pytest.mark.parametrize("scheme", [Scheme.SYMMETRIC, Scheme.AFFINE])
@pytest.mark.parametrize("qtype", ["int8", "uint4"])
def test_range_per_block_matches_a_loop(gran, scheme, qtype):
    torch.manual_seed(0)
    xs = [torch.randn(4, 6, 8) * s for s in (1.0, 3.0, 0.5)]
    obs = make_observer(QuantSpec(qtype=qtype, scheme=scheme, granularity=gran))
    for x in xs:
        obs.update(x)
    block = gran.block_size((4, 6, 8))
    lows, highs = zip(*(_reference_blocks(x, block) for x in xs))
    lo = torch.stack(lows).amin(0)
    hi = torch.stack(highs).amax(0)
    exp_lo, exp_hi = grid_range(lo, hi, obs.qtype.signed, scheme)
    got_lo, got_hi = obs.clip_range()
    assert torch.equal(got_lo, exp_lo) and torch.equal(got_hi, exp_hi)
    assert obs.sat_ratio == 0.0 or (scheme is Scheme.SYMMETRIC and qtype == "uint4"), \
        "nothing is clipped by min-max except negatives on an unsigned symmetric grid"


@pytest.mark.parametrize("gran", GRANULARITIES, ids=repr)
@pytest.mark.parametrize("scheme", [Scheme.SYMMETRIC, Scheme.AFFINE])
def test_single_tensor_qparams_equal_choose_qparams(gran, scheme):
    torch.manual_seed(1)
    x = torch.randn(4, 6, 8) + 0.3
    obs = make_observer(QuantSpec(scheme=scheme, granularity=gran))
    obs.update(x)
    got, ref = obs.qparams(), choose_qparams(x, obs.qtype, scheme, gran)
    assert torch.equal(got.scale, ref.scale) and torch.equal(got.zero_point, ref.zero_point)
    assert got.block_size == ref.block_size


def test_grid_ranges():
    lo, hi = torch.tensor([-1.0, 0.5]), torch.tensor([3.0, 2.0])
    s_lo, s_hi = grid_range(lo, hi, True, Scheme.SYMMETRIC)
    assert s_lo.tolist() == [-3.0, -2.0] and s_hi.tolist() == [3.0, 2.0], "max-abs both sides"
    u_lo, u_hi = grid_range(lo, hi, False, Scheme.SYMMETRIC)
    assert u_lo.tolist() == [0.0, 0.0] and u_hi.tolist() == [3.0, 2.0], "[0, max] unsigned"
    a_lo, a_hi = grid_range(lo, hi, True, Scheme.AFFINE)
    assert a_lo.tolist() == [-1.0, 0.0] and a_hi.tolist() == [3.0, 2.0], "affine holds 0"


@pytest.mark.parametrize("gran", GRANULARITIES, ids=repr)
def test_merge_equals_one_stream(gran):
    torch.manual_seed(2)
    xs = [torch.randn(4, 6, 8) * s for s in (1.0, 4.0, 0.1, 2.0)]
    spec = QuantSpec(scheme="affine", granularity=gran)
    one, a, b = make_observer(spec), make_observer(spec), make_observer(spec)
    for x in xs:
        one.update(x)
    for x in xs[:2]:
        a.update(x)
    for x in xs[2:]:
        b.update(x)
    a.merge(b)
    sa, so = a.state_dict(), one.state_dict()
    assert all(torch.equal(sa[k], so[k]) for k in so), "min/max merge is exact"
