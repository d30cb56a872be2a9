"""Complex tensors (primitives/complex.py): real and imaginary parts on separate grids."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import InputError
from lowbit.primitives.affine import choose_qparams, expand_param, quantize
from lowbit.primitives.complex import (ComplexQParams, choose_complex_qparams, dequantize_complex,
                                       fake_quantize_complex, quantize_complex)
from lowbit.types import PerChannel, PerGroup, PerTensor, Scheme, int4, int8, int16, uint8

CDTYPES = [torch.complex64, torch.complex128]


def _z(shape, dtype, seed=0, imag_gain=1.0):
    gen = torch.Generator().manual_seed(seed)
    re = torch.randn(shape, generator=gen, dtype=torch.float64)
    im = torch.randn(shape, generator=gen, dtype=torch.float64) * imag_gain
    return torch.complex(re, im).to(dtype)


def _assert_same_qparams(a, b, what):
    assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point), what
    assert a.qtype == b.qtype and a.block_size == b.block_size, what


@pytest.mark.parametrize("dtype", CDTYPES, ids=str)
def test_each_part_uses_its_own_grid(dtype):
    z = _z((5, 8), dtype, imag_gain=0.01)
    cqp = choose_complex_qparams(z, int8)
    _assert_same_qparams(cqp.real, choose_qparams(z.real, int8), "real qparams from z.real alone")
    _assert_same_qparams(cqp.imag, choose_qparams(z.imag, int8), "imag qparams from z.imag alone")
    assert float(cqp.imag.scale) < float(cqp.real.scale) / 10, "small imag part gets a fine grid"
    q_re, q_im = quantize_complex(z, cqp)
    assert torch.equal(q_re, quantize(z.real, cqp.real)) and q_re.dtype == torch.int8
    assert torch.equal(q_im, quantize(z.imag, cqp.imag)) and q_im.shape == z.shape


@pytest.mark.parametrize("dtype", CDTYPES, ids=str)
@pytest.mark.parametrize("granularity", [None, PerChannel(0), PerChannel(1)], ids=str)
def test_scaling_one_part_leaves_the_other_codes_unchanged(dtype, granularity):
    z = _z((4, 6), dtype, seed=1)
    cqp = choose_complex_qparams(z, int8, Scheme.AFFINE, granularity)
    q_re, q_im = quantize_complex(z, cqp)
    louder_imag = torch.complex(z.real, z.imag * 37)
    cqp2 = choose_complex_qparams(louder_imag, int8, Scheme.AFFINE, granularity)
    _assert_same_qparams(cqp2.real, cqp.real, "imag part must not move the real grid")
    assert torch.equal(quantize_complex(louder_imag, cqp2)[0], q_re), "real codes unchanged"
    louder_real = torch.complex(z.real * 37, z.imag)
    cqp3 = choose_complex_qparams(louder_real, int8, Scheme.AFFINE, granularity)
    _assert_same_qparams(cqp3.imag, cqp.imag, "real part must not move the imag grid")
    assert torch.equal(quantize_complex(louder_real, cqp3)[1], q_im), "imag codes unchanged"


def test_per_channel_gives_each_channel_and_part_its_own_scale():
    z = _z((3, 16), torch.complex64, seed=2)
    z[1] = z[1] * 100  # one loud channel
    cqp = choose_complex_qparams(z, int8, granularity=PerChannel(0))
    assert cqp.real.scale.shape == (3, 1) and cqp.imag.scale.shape == (3, 1)
    for part, qp in (("real", cqp.real), ("imag", cqp.imag)):
        values = getattr(z, part)
        expected = values.abs().amax(dim=1, keepdim=True) / 127
        assert torch.equal(qp.scale, expected), f"{part}: per-channel max-abs / 127"
    quiet = choose_complex_qparams(z[[0, 2]], int8, granularity=PerChannel(0))
    q_all = quantize_complex(z, cqp)
    q_quiet = quantize_complex(z[[0, 2]], quiet)
    for a, b in zip(q_all, q_quiet):
        assert torch.equal(a[[0, 2]], b), "the loud channel does not change the others' codes"


@pytest.mark.parametrize("dtype", CDTYPES, ids=str)
@pytest.mark.parametrize("qtype,scheme,granularity", [
    (int8, Scheme.SYMMETRIC, PerTensor()), (int4, Scheme.SYMMETRIC, PerChannel(0)),
    (uint8, Scheme.AFFINE, PerChannel(1)), (int4, Scheme.AFFINE, PerGroup(4))], ids=str)
def test_reconstruction_error_at_most_half_a_step_per_part(dtype, qtype, scheme, granularity):
    z = _z((6, 8), dtype, seed=3, imag_gain=3.0)
    cqp = choose_complex_qparams(z, qtype, scheme, granularity)
    zhat = dequantize_complex(*quantize_complex(z, cqp), cqp, dtype=dtype)
    assert zhat.dtype == dtype and zhat.shape == z.shape
    for part, qp in (("real", cqp.real), ("imag", cqp.imag)):
        x = getattr(z, part).double()
        s = expand_param(qp.scale, tuple(z.shape), qp.block_size).double()
        err = (x - getattr(zhat, part).double()).abs()
        # x * (1/s) and (q - z) * s round in float32: a few ulps of |x| on top of s/2
        assert bool((err <= s / 2 + x.abs() * 2.0 ** -21).all()), \
            f"{part}: max error {float((err - s / 2).max())} above half a step"


@pytest.mark.parametrize("dtype", CDTYPES, ids=str)
def test_fake_quantize_equals_quantize_then_dequantize(dtype):
    z = _z((4, 5), dtype, seed=4)
    cqp = choose_complex_qparams(z, int8, Scheme.AFFINE)
    fake = fake_quantize_complex(z, cqp)
    assert fake.dtype == dtype, "fake quantization keeps the complex dtype"
    assert torch.equal(fake, dequantize_complex(*quantize_complex(z, cqp), cqp, dtype=dtype))


def test_fake_quantize_complex_is_straight_through_per_part():
    z = _z((3, 7), torch.complex64, seed=5)
    cqp = choose_complex_qparams(z, int8)  # covers every value: nothing clamps
    leaf = z.clone().requires_grad_(True)
    out = fake_quantize_complex(leaf, cqp)
    (out.real.sum() + 2 * out.imag.sum()).backward()
    assert torch.equal(leaf.grad, torch.full_like(z, 1 + 2j)), "d/dRe = 1, d/dIm = 2 pass through"
    narrow = choose_complex_qparams(z * 0.5, int8)  # the extremes of each part now clamp
    leaf.grad = None
    out = fake_quantize_complex(leaf, narrow)
    (out.real.sum() + out.imag.sum()).backward()
    re_cut = leaf.grad.real == 0
    im_cut = leaf.grad.imag == 0
    assert bool(re_cut.any()) and bool(im_cut.any()), "clamped values get no gradient"
    assert not torch.equal(re_cut, im_cut), "each part is masked by its own grid"


def test_fixed_point_parts():
    z = torch.complex(torch.tensor([1.5, -130.0]), torch.tensor([200.0, 0.00390625]))
    cqp = choose_complex_qparams(z, int16, Scheme.FIXED_POINT, frac_bits=8)
    q_re, q_im = quantize_complex(z, cqp)
    assert q_re.tolist() == [384, -32768] and q_im.tolist() == [32767, 1], "Q8.8 per part"


def test_complex_qparams_round_trip_through_dicts():
    cqp = choose_complex_qparams(_z((2, 4), torch.complex64), int8, Scheme.AFFINE, PerChannel(0))
    back = ComplexQParams.from_dict(cqp.to_dict())
    _assert_same_qparams(back.real, cqp.real, "real survives to_dict/from_dict")
    _assert_same_qparams(back.imag, cqp.imag, "imag survives to_dict/from_dict")


def test_real_input_is_rejected():
    x = torch.randn(3)
    match = r"z has dtype torch.float32; it takes a complex tensor"
    with pytest.raises(InputError, match=rf"choose_complex_qparams: {match}"):
        choose_complex_qparams(x, int8)
    cqp = choose_complex_qparams(_z((3,), torch.complex64), int8)
    with pytest.raises(InputError, match=rf"quantize_complex: {match}"):
        quantize_complex(x, cqp)
    with pytest.raises(InputError, match=rf"fake_quantize_complex: {match}"):
        fake_quantize_complex(x, cqp)
    with pytest.raises(InputError, match=r"z has dtype list; it takes a complex tensor"):
        choose_complex_qparams([1 + 2j], int8)


def test_bad_codes_and_dtypes_are_rejected():
    cqp = choose_complex_qparams(_z((3,), torch.complex64), int8)
    q_re, q_im = quantize_complex(_z((3,), torch.complex64), cqp)
    with pytest.raises(InputError, match=r"q_real has shape \(3,\) but q_imag has \(2,\)"):
        dequantize_complex(q_re, q_im[:2], cqp)
    with pytest.raises(InputError, match=r"dtype=torch.float32 is not complex"):
        dequantize_complex(q_re, q_im, cqp, dtype=torch.float32)
    with pytest.raises(InputError, match=r"ComplexQParams.imag is a Tensor; it must be a QParams"):
        ComplexQParams(real=cqp.real, imag=torch.ones(1))


def test_nan_in_either_part_is_rejected():
    z = _z((4,), torch.complex64)
    z[2] = complex(0.0, float("nan"))
    with pytest.raises(InputError, match=r"input to choose_qparams contains 1 NaN/Inf"):
        choose_complex_qparams(z, int8)
