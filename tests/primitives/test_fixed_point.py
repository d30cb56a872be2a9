"""Qm.n fixed point (primitives/fixed_point.py): Q8.8 resolution and saturation, and
bit-exact agreement with the affine grid at ``s = 2**-frac_bits``, ``z = 0``."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError, InputError
from lowbit.primitives.affine import choose_qparams, dequantize, fake_quantize, quantize
from lowbit.primitives.fixed_point import (FixedPointResult, fake_fixed, fixed_point_qparams,
                                           from_fixed, to_fixed)
from lowbit.types import QParams, Scheme, int4, int8, int16, uint8

Q88_MAX = 128 - 1 / 256  # the largest Q8.8 value, code 32767


def test_q88_qparams_are_int16_with_scale_one_over_256():
    qp = fixed_point_qparams(int16, 8, (3, 5))
    assert qp.qtype == int16 and qp.block_size == (3, 5)
    assert torch.equal(qp.scale, torch.full((1, 1), 1 / 256)), "Q8.8 scale must be exactly 2**-8"
    assert torch.equal(qp.zero_point, torch.zeros((1, 1), dtype=torch.int32))
    scalar = fixed_point_qparams("int16", 8)
    assert scalar.scale.shape == () and scalar.block_size == (), "shape=() gives 0-d qparams"


def test_every_q88_value_round_trips_exactly():
    codes = torch.arange(-32768, 32768, dtype=torch.int32)
    x = codes.float() / 256  # exact in float32
    result = to_fixed(x)
    assert isinstance(result, FixedPointResult)
    assert result.qdata.dtype == torch.int16
    assert torch.equal(result.qdata.int(), codes), "each multiple of 1/256 has its own code"
    assert result.n_saturated == 0 and result.sat_ratio == 0.0
    assert torch.equal(from_fixed(result.qdata), x), "1/256 resolution: the grid is exact"


def test_half_steps_round_to_even_code():
    k = torch.arange(-300, 300, dtype=torch.float64)
    x = ((k + 0.5) / 256).float()  # exactly half way between two codes
    even = k + (torch.remainder(k, 2) == 1).double()
    assert torch.equal(to_fixed(x).qdata.double(), even), "ties go to the even code"


def test_values_beyond_the_range_saturate_and_are_counted_exactly():
    inside = [0.0, 1 / 256, -128.0, Q88_MAX, 127.998, -128 - 1 / 512, 100.5, -0.001]
    beyond_hi = [128.0, 128 - 1 / 512, 129.0, 1e6, 300.25]  # 128 - 1/512 ties up to 32768
    beyond_lo = [-128.01, -129.0, -1e5]
    x = torch.tensor(inside + beyond_hi + beyond_lo)
    perm = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))
    x = x[perm]
    result = to_fixed(x, frac_bits=8, qtype=int16)
    assert result.n_saturated == len(beyond_hi) + len(beyond_lo), "every value past ±128 counts"
    assert result.sat_ratio == pytest.approx((len(beyond_hi) + len(beyond_lo)) / x.numel())
    back = from_fixed(result.qdata)
    hi = torch.isin(x, torch.tensor(beyond_hi))
    lo = torch.isin(x, torch.tensor(beyond_lo))
    assert bool((back[hi] == Q88_MAX).all()), "values above the range clamp to 128 - 1/256"
    assert bool((back[lo] == -128.0).all()), "values below the range clamp to -128"
    ok = ~(hi | lo)
    assert bool(((back[ok] - x[ok]).abs() <= 1 / 512).all()), "inside: error at most half a step"


def test_other_formats_saturate_at_their_own_range():
    # Q4.4 on int8: step 1/16, range [-8, 8 - 1/16]
    x = torch.tensor([7.9375, 8.0, -8.0, -8.5, 0.03125, 0.09375])
    result = to_fixed(x, frac_bits=4, qtype=int8)
    assert result.qdata.tolist() == [127, 127, -128, -128, 0, 2], "Q4.4 codes (ties to even)"
    assert result.n_saturated == 2 and result.sat_ratio == pytest.approx(2 / 6)
    empty = to_fixed(torch.empty(0))
    assert empty.n_saturated == 0 and empty.sat_ratio == 0.0 and empty.qdata.shape == (0,)


@pytest.mark.parametrize("qtype,frac_bits", [(int16, 8), (int16, 12), (int8, 4), (int8, 0),
                                             (int4, 2), (uint8, 5), (int16, 30)], ids=str)
def test_same_codes_as_the_affine_grid(qtype, frac_bits):
    torch.manual_seed(1)
    span = (qtype.qmax - qtype.qmin) * 2.0 ** -frac_bits
    x = (torch.rand(4, 33) - 0.5) * span * 1.3  # about 20% beyond the range
    x[0, :8] = (torch.arange(8) + 0.5) * 2.0 ** -frac_bits  # exact ties
    by_hand = QParams(scale=torch.full((1, 1), 2.0 ** -frac_bits),
                      zero_point=torch.zeros((1, 1), dtype=torch.int32),
                      qtype=qtype, block_size=(4, 33))
    chosen = choose_qparams(x, qtype, Scheme.FIXED_POINT, frac_bits=frac_bits)
    result = to_fixed(x, frac_bits, qtype)
    assert torch.equal(result.qdata, quantize(x, by_hand)), "to_fixed must be affine.quantize"
    assert torch.equal(result.qdata, quantize(x, chosen)), "and equal the FIXED_POINT scheme"
    assert torch.equal(from_fixed(result.qdata, frac_bits), dequantize(result.qdata, by_hand))
    assert torch.equal(fake_fixed(x, frac_bits, qtype), fake_quantize(x, by_hand))
    expected_sat = int(((x * 2.0 ** frac_bits).round() > qtype.qmax).sum()
                       + ((x * 2.0 ** frac_bits).round() < qtype.qmin).sum())
    assert 0 < result.n_saturated == expected_sat, "saturation counted on the unclamped codes"


def test_fake_fixed_is_straight_through_except_where_saturated():
    torch.manual_seed(2)
    x = (torch.randn(64, dtype=torch.float64) * 100).requires_grad_(True)
    out = fake_fixed(x)
    assert out.dtype == torch.float64, "fake_fixed keeps the input dtype"
    out.backward(torch.ones_like(out))
    n_sat = to_fixed(x.detach()).n_saturated
    assert n_sat > 0, "inputs must exercise saturation"
    assert int((x.grad == 0).sum()) == n_sat, "gradient is cut exactly where values saturated"
    assert bool((x.grad[x.grad != 0] == 1).all()), "and passes unchanged everywhere else"


def test_from_fixed_dtype():
    q = torch.tensor([-32768, -1, 0, 1, 32767], dtype=torch.int16)
    out = from_fixed(q, 8, dtype=torch.float64)
    assert out.dtype == torch.float64
    assert out.tolist() == [-128.0, -1 / 256, 0.0, 1 / 256, Q88_MAX]


@pytest.mark.parametrize("bad", [-1, 31, 2.5, True, "8", None])
def test_bad_frac_bits_are_rejected(bad):
    match = rf"frac_bits={bad!r} is invalid: allowed an integer in \[0, 30\]".replace("(", r"\(")
    with pytest.raises(ConfigError, match=match):
        to_fixed(torch.zeros(3), frac_bits=bad)
    with pytest.raises(ConfigError, match=match):
        fixed_point_qparams(int16, bad)
    with pytest.raises(ConfigError, match=match):
        from_fixed(torch.zeros(3, dtype=torch.int16), bad)
    with pytest.raises(ConfigError, match=match):
        fake_fixed(torch.zeros(3), bad)


def test_bad_qtype_is_rejected():
    with pytest.raises(ConfigError, match=r"qtype=16 is invalid: allowed a lowbit QType"):
        to_fixed(torch.zeros(3), 8, 16)
    with pytest.raises(ConfigError, match=r"qtype='int17' is invalid"):
        fixed_point_qparams("int17", 8)


def test_bad_inputs_are_rejected():
    with pytest.raises(InputError, match=r"from_fixed: q has dtype torch.float32; it takes int"):
        from_fixed(torch.zeros(3), 8)
    with pytest.raises(InputError, match=r"input to to_fixed contains 1 NaN/Inf"):
        to_fixed(torch.tensor([1.0, float("inf")]))
