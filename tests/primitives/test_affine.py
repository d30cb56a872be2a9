"""Oracle tests of the affine grid (primitives/affine.py).

PyTorch's own quantize kernels are the oracle: ``torch.fake_quantize_per_{tensor,channel}_affine``
compute ``(clamp(nearbyint(x * (1/s)) + z, qmin, qmax) - z) * s`` with the reciprocal taken in
float32 and round half to even, and lowbit promises the same arithmetic, so every comparison is
bit-exact (``torch.equal`` plus a comparison of the raw float bits).  PyTorch's
``quantize_per_tensor``/``quantize_per_channel`` to qint8/quint8 add ``z`` *before* rounding
(one fma, resp. a float32 add), which disagrees with PyTorch's own fake quantize by one code at
ties when ``z`` is odd; they are compared directly at ``z = 0`` and, for every ``z``, through
their qint32 kernel at ``z = 0`` plus ``z`` added as an integer.  ``choose_qparams`` is held
against a naive reference written below with Python loops over elements and numpy float32
scalars, which knows nothing about block shapes.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lowbit.errors import InputError
from lowbit.primitives.affine import (EPS, block_reduce, choose_qparams, dequantize,
                                      expand_param, fake_quantize, qparams_from_range, quantize)
from lowbit.types import (PerChannel, PerGroup, PerTensor, PerToken, QParams, Scheme, int4,
                          int8, int16, uint4, uint8)

# (lowbit grid, torch quantized dtype) pairs of the oracle
GRIDS = [(int8, torch.qint8), (uint8, torch.quint8)]
SHAPES = [(), (7,), (1,), (3, 5), (2, 3, 4), (2, 3, 4, 5)]
# tiny .. large; 0.1, 1/3, 0.7, 2.5e-3 and 10/3 have inexact reciprocals, powers of two exact ones
SCALES = [1e-5, 2.0 ** -14, 2.5e-3, 0.1, 1 / 3, 0.25, 0.7, 1.0, 10 / 3, 8.0, 10.0]


def _f32(v: float) -> float:
    """``v`` rounded to the nearest float32 (so torch's double scale args are exact)."""
    return float(torch.tensor(v, dtype=torch.float32))


def _zero_points(qtype, gen) -> list[int]:
    """0 (if on the grid), both extremes and one random point in range."""
    rand = int(torch.randint(qtype.qmin, qtype.qmax + 1, (1,), generator=gen))
    return sorted({max(0, qtype.qmin), qtype.qmin, qtype.qmax, rand})


def _inputs(shape, scale: float, zero: int, qtype, gen) -> torch.Tensor:
    """Random values covering the grid, outliers beyond it, and exact .5 ties ``(k+0.5)*s``."""
    n = max(1, math.prod(shape))
    span = (qtype.qmax - qtype.qmin) * scale
    x = (torch.rand(n, generator=gen) * 1.4 - 0.7) * span + (qtype.qmin + qtype.qmax) / 2 * scale
    x = x - zero * scale
    # half-way points between codes, including just outside the grid on either side
    k = torch.randint(qtype.qmin - zero - 3, qtype.qmax - zero + 3, (n,), generator=gen)
    ties = ((k.double() + 0.5) * scale).float()
    use_tie = torch.rand(n, generator=gen) < 0.5
    x = torch.where(use_tie, ties, x)
    return x.reshape(shape)


def _assert_bit_equal(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != oracle {ref.dtype}"
    bad = ours != ref
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())} value(s) differ from PyTorch, e.g. "
                                 f"{ours[bad][:4].tolist()} vs {ref[bad][:4].tolist()}")
    if ours.is_floating_point():  # equal values could still differ in sign of zero
        assert torch.equal(ours.view(torch.int32), ref.view(torch.int32)), f"{what}: bits differ"


def _per_tensor_qp(shape, scale: float, zero: int, qtype) -> QParams:
    one = (1,) * len(shape)
    return QParams(scale=torch.full(one, scale, dtype=torch.float32),
                   zero_point=torch.full(one, zero, dtype=torch.int32),
                   qtype=qtype, block_size=PerTensor().block_size(shape))


def _per_channel_qp(shape, axis: int, scales: torch.Tensor, zeros: torch.Tensor, qtype) -> QParams:
    pshape = [1] * len(shape)
    pshape[axis] = shape[axis]
    return QParams(scale=scales.reshape(pshape), zero_point=zeros.reshape(pshape).to(torch.int32),
                   qtype=qtype, block_size=PerChannel(axis).block_size(shape))


# torch.quantize_per_* warn that they are deprecated; they are still the oracle
# torch.quantize_per_* open a thread pool even for 7 elements (~20 ms a call on a busy
# 2-core machine); the oracle needs no parallelism
pytestmark = [pytest.mark.filterwarnings("ignore:.*quantized tensor creation:UserWarning"),
              pytest.mark.usefixtures("single_thread")]

# ------------------------------------------------------------------ per tensor


@pytest.mark.parametrize("qtype,tdtype", GRIDS, ids=["int8", "uint8"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_per_tensor_bit_identical_to_pytorch(qtype, tdtype, shape):
    gen = torch.Generator().manual_seed(1000 + len(shape))
    for scale in map(_f32, SCALES):
        for zero in _zero_points(qtype, gen):
            x = _inputs(shape, scale, zero, qtype, gen)
            qp = _per_tensor_qp(shape, scale, zero, qtype)
            case = f"{qtype} shape={shape} scale={scale!r} zero={zero}"
            ref_fq = torch.fake_quantize_per_tensor_affine(x, scale, zero, qtype.qmin, qtype.qmax)
            _assert_bit_equal(fake_quantize(x, qp), ref_fq, f"fake_quantize {case}")
            # torch.quantize_per_tensor to qint8/quint8 rounds fma(x, 1/s, z) in one step,
            # unlike its own fake_quantize (round(x * (1/s)) + z): the two differ at ties with
            # an odd z.  lowbit follows fake_quantize, so the rounding is taken from the qint32
            # kernel at z=0 and z is added as an integer; at z=0 the int8 kernel is compared too.
            rounded = torch.quantize_per_tensor(x, scale, 0, torch.qint32).int_repr()
            ref_q = (rounded.long() + zero).clamp(qtype.qmin, qtype.qmax).to(qtype.storage_dtype)
            codes = quantize(x, qp)
            _assert_bit_equal(codes, ref_q, f"quantize {case}")
            if zero == 0:
                direct = torch.quantize_per_tensor(x, scale, 0, tdtype).int_repr()
                _assert_bit_equal(codes, direct, f"quantize vs {tdtype} {case}")
            _assert_bit_equal(dequantize(codes, qp), ref_fq, f"dequantize(quantize) {case}")


@pytest.mark.parametrize("qtype", [int8, uint8], ids=str)
def test_exact_ties_round_half_to_even(qtype):
    # power-of-two scales make x * (1/s) exactly k + 0.5: the tie goes to the even code
    for scale in (2.0 ** -10, 0.5, 1.0, 4.0):
        k = torch.arange(qtype.qmin - 1, qtype.qmax + 1, dtype=torch.float64)
        x = ((k + 0.5) * scale).float()
        qp = _per_tensor_qp((x.numel(),), scale, 0, qtype)
        even = k + (torch.remainder(k, 2) == 1).double()  # the even one of k, k+1
        expected = even.clamp(qtype.qmin, qtype.qmax).to(qtype.storage_dtype)
        assert torch.equal(quantize(x, qp), expected), f"ties at scale {scale} not to even"
    one = _per_tensor_qp((6,), 1.0, 0, int8)
    got = quantize(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]), one).tolist()
    assert got == [0, 2, 2, 0, -2, -2], "round half to even, not half away from zero"


# ------------------------------------------------------------------ per channel

PER_CHANNEL_CASES = [((9,), 0), ((4, 6), 0), ((4, 6), 1), ((4, 6), -1), ((3, 4, 5), 0),
                     ((3, 4, 5), 1), ((3, 4, 5), 2), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 3),
                     ((2, 3, 4, 5), -2)]


def _channel_params(n: int, qtype, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-uniform scales in [1e-5, 10] with inexact-reciprocal and extreme ones mixed in,
    and zero points that include 0 (where on the grid) and both extremes."""
    scales = torch.exp(torch.empty(n).uniform_(math.log(1e-5), math.log(10.0), generator=gen))
    fixed = torch.tensor([0.1, 1 / 3, 1e-5, 10.0, 0.7])
    scales[: min(n, 5)] = fixed[: min(n, 5)]
    zeros = torch.randint(qtype.qmin, qtype.qmax + 1, (n,), generator=gen)
    extremes = torch.tensor([qtype.qmin, qtype.qmax, max(0, qtype.qmin)])
    zeros[-min(n, 3):] = extremes[: min(n, 3)]
    return scales.float(), zeros.to(torch.int32)


def _channel_inputs(shape, axis: int, scales, zeros, qtype, gen) -> torch.Tensor:
    """Per-channel version of :func:`_inputs` (values, outliers and exact ties)."""
    pshape = [1] * len(shape)
    pshape[axis] = shape[axis]
    s = scales.double().reshape(pshape)
    z = zeros.double().reshape(pshape)
    u = torch.rand(shape, generator=gen, dtype=torch.float64) * 1.4 - 0.15
    x = (qtype.qmin + u * (qtype.qmax - qtype.qmin) - z) * s
    k = torch.randint(qtype.qmin - 3, qtype.qmax + 3, shape, generator=gen).double()
    ties = (k - z + 0.5) * s
    return torch.where(torch.rand(shape, generator=gen) < 0.5, ties, x).float()


@pytest.mark.parametrize("qtype,tdtype", GRIDS, ids=["int8", "uint8"])
@pytest.mark.parametrize("shape,axis", PER_CHANNEL_CASES, ids=str)
def test_per_channel_bit_identical_to_pytorch(qtype, tdtype, shape, axis):
    gen = torch.Generator().manual_seed(2000 + len(shape) * 10 + axis)
    ax = axis % len(shape)
    for trial in range(4):
        scales, zeros = _channel_params(shape[ax], qtype, gen)
        if trial == 0:
            zeros = torch.zeros_like(zeros) + max(0, qtype.qmin)
        x = _channel_inputs(shape, ax, scales, zeros, qtype, gen)
        qp = _per_channel_qp(shape, axis, scales, zeros, qtype)
        case = f"{qtype} shape={shape} axis={axis} trial={trial}"
        ref_fq = torch.fake_quantize_per_channel_affine(x, scales, zeros, ax,
                                                        qtype.qmin, qtype.qmax)
        _assert_bit_equal(fake_quantize(x, qp), ref_fq, f"fake_quantize {case}")
        # torch.quantize_per_channel to qint8/quint8 rounds float32(x * (1/s)) + z, adding z
        # before rounding; lowbit (like torch's fake_quantize) rounds first.  Same at z=0.
        pshape = qp.scale.shape
        rounded = torch.quantize_per_channel(x, scales.double(), torch.zeros_like(zeros).long(), ax,
                                             torch.qint32).int_repr()
        ref_q = (rounded.long() + zeros.reshape(pshape)).clamp(qtype.qmin, qtype.qmax)
        codes = quantize(x, qp)
        _assert_bit_equal(codes, ref_q.to(qtype.storage_dtype), f"quantize {case}")
        if trial == 0:
            direct = torch.quantize_per_channel(x, scales.double(), zeros.long(), ax, tdtype)
            _assert_bit_equal(codes, direct.int_repr(), f"quantize vs {tdtype} {case}")
        _assert_bit_equal(dequantize(codes, qp), ref_fq, f"dequantize(quantize) {case}")


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("qtype", [int8, uint8], ids=str)
def test_straight_through_gradient_matches_pytorch_per_tensor(qtype):
    gen = torch.Generator().manual_seed(3)
    for scale in map(_f32, (1e-3, 0.1, 1 / 3)):
        for zero in _zero_points(qtype, gen):
            x = _inputs((5, 40), scale, zero, qtype, gen)
            grad_out = torch.randn(x.shape, generator=gen)
            ours = x.clone().requires_grad_(True)
            fake_quantize(ours, _per_tensor_qp(x.shape, scale, zero, qtype)).backward(grad_out)
            ref = x.clone().requires_grad_(True)
            torch.fake_quantize_per_tensor_affine(ref, scale, zero, qtype.qmin,
                                                  qtype.qmax).backward(grad_out)
            _assert_bit_equal(ours.grad, ref.grad, f"grad {qtype} scale={scale} zero={zero}")
            clamped = (ref.grad == 0).sum()
            assert 0 < int(clamped) < x.numel(), "inputs must exercise both the pass and the mask"


def test_straight_through_gradient_matches_pytorch_per_channel():
    gen = torch.Generator().manual_seed(4)
    shape, axis = (3, 4, 6), 1
    scales, zeros = _channel_params(shape[axis], int8, gen)
    x = _channel_inputs(shape, axis, scales, zeros, int8, gen)
    grad_out = torch.randn(shape, generator=gen)
    ours = x.clone().requires_grad_(True)
    fake_quantize(ours, _per_channel_qp(shape, axis, scales, zeros, int8)).backward(grad_out)
    ref = x.clone().requires_grad_(True)
    torch.fake_quantize_per_channel_affine(ref, scales, zeros, axis, -128, 127).backward(grad_out)
    _assert_bit_equal(ours.grad, ref.grad, "per-channel grad")


# ------------------------------------------------------------------ choose_qparams vs loops


def _param_index(granularity, idx: tuple[int, ...]) -> tuple[int, ...]:
    """Which (scale, zero_point) entry element ``idx`` uses, stated per granularity."""
    n = len(idx)
    if isinstance(granularity, PerTensor):
        return (0,) * n
    if isinstance(granularity, PerChannel):
        a = granularity.axis % n
        return tuple(i if d == a else 0 for d, i in enumerate(idx))
    if isinstance(granularity, PerGroup):
        a = granularity.axis % n
        return tuple(i // granularity.size if d == a else i for d, i in enumerate(idx))
    if isinstance(granularity, PerToken):
        return tuple(idx[:-1]) + (0,)
    raise AssertionError(granularity)


def _ref_scale_zero(lo, hi, qtype, scheme, frac_bits):
    """Scale and zero point of one block, float32 arithmetic one operation at a time."""
    f32 = np.float32
    if scheme is Scheme.FIXED_POINT:
        return f32(2.0 ** -frac_bits), 0
    eps = f32(np.finfo(np.float32).eps)
    if scheme is Scheme.SYMMETRIC:
        amax = max(-lo, hi) if qtype.signed else max(hi, f32(0))
        return max(f32(amax / f32(qtype.qmax)), eps), 0
    lo, hi = min(lo, f32(0)), max(hi, f32(0))
    scale = max(f32((hi - lo) / f32(qtype.qmax - qtype.qmin)), eps)
    zero = qtype.qmin - round(float(f32(lo / scale)))  # Python round: half to even
    return scale, min(max(zero, qtype.qmin), qtype.qmax)


def _ref_choose(x: torch.Tensor, qtype, scheme, granularity, frac_bits=None):
    """Naive choose_qparams: per-entry min/max by a Python loop over every element."""
    values = x.tolist()
    ranges: dict[tuple[int, ...], list] = {}
    for idx in itertools.product(*(range(n) for n in x.shape)):
        v = values
        for i in idx:
            v = v[i]
        v = np.float32(v)
        key = _param_index(granularity, idx)
        lo_hi = ranges.setdefault(key, [v, v])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], v), max(lo_hi[1], v)
    pshape = tuple(max(k[d] for k in ranges) + 1 for d in range(x.dim()))
    scale = torch.zeros(pshape, dtype=torch.float32)
    zero = torch.zeros(pshape, dtype=torch.int32)
    for key, (lo, hi) in ranges.items():
        s, z = _ref_scale_zero(lo, hi, qtype, scheme, frac_bits)
        scale[key], zero[key] = float(s), z
    return scale, zero


def _ref_quantize(x: torch.Tensor, scale, zero, granularity, qtype) -> torch.Tensor:
    """Element by element ``clamp(round(x * (1/s)) + z)`` in float32 scalars."""
    out = torch.zeros(x.shape, dtype=torch.int64)
    for idx in itertools.product(*(range(n) for n in x.shape)):
        key = _param_index(granularity, idx)
        inv = np.float32(1.0) / np.float32(float(scale[key]))
        code = round(float(np.float32(float(x[idx])) * inv)) + int(zero[key])
        out[idx] = min(max(code, qtype.qmin), qtype.qmax)
    return out.to(qtype.storage_dtype)


SCHEMES = [(Scheme.SYMMETRIC, int8, None), (Scheme.SYMMETRIC, uint8, None),
           (Scheme.SYMMETRIC, int4, None), (Scheme.AFFINE, int8, None),
           (Scheme.AFFINE, uint8, None), (Scheme.AFFINE, uint4, None),
           (Scheme.FIXED_POINT, int16, 8), (Scheme.FIXED_POINT, int8, 4)]
GRANULARITIES = [((4, 6), PerTensor()), ((4, 6), PerChannel(0)), ((4, 6), PerChannel(1)),
                 ((4, 6), PerGroup(3, -1)), ((4, 6), PerGroup(2, 0)), ((4, 6), PerToken()),
                 ((2, 3, 4), PerChannel(-1)), ((2, 3, 4), PerGroup(2, 2)), ((2, 3, 4), PerToken()),
                 ((2, 3, 4), PerGroup(3, 1)), ((8,), PerGroup(4)), ((8,), PerToken())]


@pytest.mark.parametrize("scheme,qtype,frac_bits", SCHEMES, ids=lambda v: str(v))
@pytest.mark.parametrize("shape,granularity", GRANULARITIES, ids=str)
def test_choose_qparams_matches_loop_reference(scheme, qtype, frac_bits, shape, granularity):
    gen = torch.Generator().manual_seed(5)
    for kind in ("mixed", "positive", "negative"):
        x = torch.randn(shape, generator=gen) * 3
        x = x.abs() + 0.2 if kind == "positive" else -x.abs() - 0.2 if kind == "negative" else x
        qp = choose_qparams(x, qtype, scheme, granularity, frac_bits=frac_bits)
        ref_scale, ref_zero = _ref_choose(x, qtype, scheme, granularity, frac_bits)
        case = f"{scheme.value} {qtype} {granularity} {shape} {kind}"
        assert qp.scale.shape == ref_scale.shape, f"{case}: qparams shape {tuple(qp.scale.shape)}"
        _assert_bit_equal(qp.scale, ref_scale, f"scale {case}")
        _assert_bit_equal(qp.zero_point, ref_zero, f"zero_point {case}")
        assert qp.qtype == qtype and qp.block_size == granularity.block_size(shape), case
        ref_q = _ref_quantize(x, ref_scale, ref_zero, granularity, qtype)
        _assert_bit_equal(quantize(x, qp), ref_q, f"quantize {case}")


# ------------------------------------------------------------------ round trip and edge cases


@pytest.mark.parametrize("scheme,qtype", [(Scheme.SYMMETRIC, int8), (Scheme.SYMMETRIC, uint8),
                                          (Scheme.AFFINE, int8), (Scheme.AFFINE, uint4),
                                          (Scheme.SYMMETRIC, int4)], ids=str)
@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(0), PerGroup(4), PerToken()],
                         ids=str)
def test_round_trip_error_at_most_half_a_step_inside_the_range(scheme, qtype, granularity):
    torch.manual_seed(6)
    x = torch.randn(6, 16) * torch.rand(6, 1) * 5
    if not qtype.signed and scheme is Scheme.SYMMETRIC:
        x = x.abs()  # unsigned symmetric covers [0, amax]
    qp = choose_qparams(x, qtype, scheme, granularity)
    xhat = dequantize(quantize(x, qp), qp)
    shape = tuple(x.shape)
    s = expand_param(qp.scale, shape, qp.block_size).expand(shape).double()
    z = expand_param(qp.zero_point, shape, qp.block_size).expand(shape).double()
    xd = x.double()
    # x * (1/s) and (q - z) * s each round once in float32: a few ulps of |x| on top of s/2
    slack = xd.abs() * 2.0 ** -21
    inside = (xd >= (qtype.qmin - z - 0.5) * s - slack) & (xd <= (qtype.qmax - z + 0.5) * s + slack)
    assert bool(inside.all()), "min/max qparams must put every value within half a step of the grid"
    err = (xd - xhat.double()).abs()
    assert bool((err <= s / 2 + slack).all()), f"max error {float((err - s / 2).max())} above s/2"


@pytest.mark.parametrize("value", [0.0, 3.7, -2.0, 1e-30])
@pytest.mark.parametrize("scheme,qtype", [(Scheme.SYMMETRIC, int8), (Scheme.SYMMETRIC, uint8),
                                          (Scheme.AFFINE, int8), (Scheme.AFFINE, uint8)], ids=str)
@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel(1), PerGroup(2), PerToken()],
                         ids=str)
def test_constant_tensors_get_a_finite_positive_scale(value, scheme, qtype, granularity):
    x = torch.full((3, 4), value)
    qp = choose_qparams(x, qtype, scheme, granularity)
    assert bool(torch.isfinite(qp.scale).all()) and bool((qp.scale >= EPS).all()), \
        f"scale {qp.scale.flatten().tolist()} must be finite and at least EPS"
    xhat = dequantize(quantize(x, qp), qp)
    assert bool(torch.isfinite(xhat).all()), "round trip of a constant tensor produced NaN/Inf"
    if value == 0.0:
        assert torch.equal(xhat, x), "zero must be exactly representable"


def test_scalar_input_keeps_its_shape():
    x = torch.tensor(0.37)
    qp = choose_qparams(x, int8)
    assert quantize(x, qp).shape == () and dequantize(quantize(x, qp), qp).shape == ()
    assert fake_quantize(x, qp).shape == (), "a 0-d tensor must stay 0-d, as in PyTorch"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_rejected(bad):
    x = torch.randn(4, 4)
    x[1, 2] = bad
    with pytest.raises(InputError, match=r"input to choose_qparams contains 1 NaN/Inf"):
        choose_qparams(x, int8)
    qp = choose_qparams(torch.randn(4, 4), int8)
    with pytest.raises(InputError, match=r"input to quantize contains 1 NaN/Inf .* out of 16"):
        quantize(x, qp)
    with pytest.raises(InputError, match=r"observed minimum contains 1 NaN/Inf"):
        qparams_from_range(torch.tensor([bad]), torch.tensor([1.0]), int8, Scheme.AFFINE, (4,))


def test_fake_quantize_propagates_nan_rather_than_hiding_it():
    qp = choose_qparams(torch.randn(4), int8)
    out = fake_quantize(torch.tensor([0.1, float("nan"), 0.2, -0.3]), qp)
    assert bool(torch.isnan(out[1])) and bool(torch.isfinite(out[[0, 2, 3]]).all()), \
        "a NaN in training must stay visible, not become a valid-looking code"


def test_fixed_point_scheme_needs_frac_bits():
    with pytest.raises(InputError, match=r"FIXED_POINT qparams need frac_bits"):
        choose_qparams(torch.randn(4), int16, Scheme.FIXED_POINT)


@pytest.mark.parametrize("shape,block,match", [
    ((4, 6), (0, 6), r"block size 0 in \(0, 6\) is not positive"),
    ((4, 6), (4,), r"block_size \(4,\) has 1 dims but the tensor has 2"),
])
def test_block_reduce_rejects_bad_block_sizes(shape, block, match):
    with pytest.raises(InputError, match=match):
        block_reduce(torch.randn(shape), block, "amax")


def test_granularities_reject_blocks_that_do_not_fit():
    with pytest.raises(InputError, match=r"PerChannel: axis=2 is out of range for a 2-d tensor"):
        choose_qparams(torch.randn(4, 6), int8, granularity=PerChannel(2))


@pytest.mark.parametrize("fn", [quantize, fake_quantize, dequantize], ids=lambda f: f.__name__)
def test_qparams_of_another_shape_are_rejected(fn):
    qp = choose_qparams(torch.randn(6, 4), int8, granularity=PerChannel(0))  # scale (6, 1)
    x = torch.randn(4, 6)
    if fn is dequantize:
        x = quantize(torch.randn(6, 4), qp).reshape(4, 6)
    with pytest.raises(InputError, match=r"qparams with scale of shape \(6, 1\) with block_size "
                                         r"\(1, 4\) do not fit a tensor of shape \(4, 6\)"):
        fn(x, qp)

# ---------------------------------------------------------------------------- boundary checks


def test_an_affine_range_near_float32_max_gets_a_finite_scale_and_finite_values():
    """(hi - lo) overflowed float32 here and gave scale=inf, then NaN after dequantize."""
    x = torch.tensor([-2e38, 2e38])
    qp = choose_qparams(x, int8, Scheme.AFFINE)
    assert bool(torch.isfinite(qp.scale).all())
    back = dequantize(quantize(x, qp), qp)
    assert bool(torch.isfinite(back).all())
    assert torch.allclose(back, x, rtol=float(qp.scale) / 2e38 * 2)


@pytest.mark.parametrize("scheme", [Scheme.AFFINE, Scheme.SYMMETRIC])
def test_a_range_whose_grid_overflows_float32_is_an_error_not_nan(scheme):
    x = torch.tensor([-3.4e38, 3.4e38])
    with pytest.raises(InputError, match=r"range \[-3\.4e\+38, 3\.4e\+38\] is too wide .*"
                                         r"overflow float32.*Fix: clip or rescale"):
        choose_qparams(x, int8, scheme)


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf")])
def test_dequantize_and_quantize_refuse_scales_that_are_not_finite_and_positive(bad):
    qp = QParams(torch.tensor([bad]), torch.zeros(1, dtype=torch.int32), int8, (4,))
    with pytest.raises(InputError, match=r"QParams.scale holds 1 value\(s\) that are not finite "
                                         r"and > 0 .*Fix: choose qparams from the data"):
        dequantize(torch.zeros(4, dtype=torch.int8), qp)
    with pytest.raises(InputError, match="not finite and > 0"):
        quantize(torch.zeros(4), qp)


def test_empty_meta_and_non_tensor_inputs_are_named():
    with pytest.raises(InputError, match=r"input to choose_qparams is empty \(shape \(0,\)\).*Fix"):
        choose_qparams(torch.tensor([]), int8)
    with pytest.raises(InputError, match=r"input to choose_qparams is on the 'meta' device"):
        choose_qparams(torch.zeros(3, device="meta"), int8)
    with pytest.raises(InputError, match=r"input to choose_qparams must be a torch.Tensor, "
                                         r"got list"):
        choose_qparams([1.0, 2.0], int8)
    qp = choose_qparams(torch.ones(4), int8)
    with pytest.raises(InputError, match="codes to dequantize must be a torch.Tensor, got int"):
        dequantize(3, qp)
    with pytest.raises(InputError, match="qparams must be a lowbit QParams, got dict"):
        quantize(torch.ones(4), {"scale": 1.0})
