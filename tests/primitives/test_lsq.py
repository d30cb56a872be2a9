"""LSQ: forward bit-identical to affine fake-quantize, backward equal to the paper's formula
(written out element by element below) and to PyTorch's learnable fake-quantize kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lowbit.errors import ConfigError, InputError
from lowbit.primitives.affine import choose_qparams, fake_quantize
from lowbit.primitives.lsq import lsq_fake_quantize, lsq_grad_scale
from lowbit.types import PerChannel, Scheme, int4, int8, uint4, uint8


def _naive_lsq_grads(x, scale, zero, grad, qmin, qmax, grad_scale):
    """LSQ gradients by the paper's case analysis, one element at a time, in numpy.

    ``v`` is computed as float32 ``x * (1/s)`` (as quantization does), so that each element
    falls in the same case (inside / below / above) as in the implementation; the sums are
    accumulated in float64.  ``scale``/``zero`` are (C, 1) arrays (C = 1 per tensor).
    """
    x, grad = x.numpy(), grad.numpy()
    s32, z = scale.numpy().astype(np.float32), zero.numpy()
    rows, cols = x.shape
    dx = np.zeros_like(x)
    ds = np.zeros(s32.shape, dtype=np.float64)
    cases = set()
    for i in range(rows):
        for j in range(cols):
            c = 0 if s32.shape[0] == 1 else i  # which step this element uses
            v = np.float32(x[i, j]) * (np.float32(1.0) / s32[c, 0])
            r = float(np.round(v))  # numpy rounds half to even
            q = r + float(z[c, 0])
            if q < qmin:
                d, cases = float(qmin - z[c, 0]), cases | {"below"}
            elif q > qmax:
                d, cases = float(qmax - z[c, 0]), cases | {"above"}
            else:
                d, cases = r - float(v), cases | {"inside"}
                dx[i, j] = grad[i, j]
            ds[c, 0] += float(grad[i, j]) * d
    assert cases == {"below", "inside", "above"}, f"test data must exercise every case: {cases}"
    return dx, ds * grad_scale


def _case(per_channel: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(4, 12, generator=g)
    rows = 4 if per_channel else 1
    scale = 0.15 + 0.1 * torch.rand(rows, 1, generator=g)  # int4 grid covers about ±1.5
    zero = torch.randint(-2, 3, (rows, 1), generator=g).float()
    return x, scale, zero, torch.randn(4, 12, generator=g)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_gradients_equal_the_papers_formula(per_channel):
    x, scale, zero, grad = _case(per_channel)
    qmin, qmax = int4.qmin, int4.qmax
    xr, sr = x.clone().requires_grad_(), scale.clone().requires_grad_()
    lsq_fake_quantize(xr, sr, zero, qmin, qmax).backward(grad)
    n = x.numel() // scale.numel()  # elements per step: 48 per tensor, 12 per channel
    dx, ds = _naive_lsq_grads(x, scale, zero, grad, qmin, qmax, 1 / math.sqrt(n * qmax))
    assert torch.equal(xr.grad, torch.from_numpy(dx)), "dx is the straight-through mask, exact"
    assert sr.grad.shape == scale.shape, "the step's gradient has the step's shape"
    # float32 sums against float64 sums: a few float32 ulps of the step's total gradient
    np.testing.assert_allclose(sr.grad.double().numpy(), ds, rtol=1e-5, atol=1e-6)


def test_explicit_grad_scale_multiplies_only_the_step_gradient():
    x, scale, zero, grad = _case(True, seed=3)
    grads = []
    for gs in (1.0, 0.25):
        xr, sr = x.clone().requires_grad_(), scale.clone().requires_grad_()
        lsq_fake_quantize(xr, sr, zero, -8, 7, grad_scale=gs).backward(grad)
        grads.append((xr.grad, sr.grad))
    assert torch.equal(grads[0][0], grads[1][0]), "grad_scale must not touch dx"
    assert torch.equal(grads[0][1] * 0.25, grads[1][1]), "0.25 is exact in float32"


@pytest.mark.parametrize("qtype,scheme,per_channel", [
    (int8, Scheme.SYMMETRIC, False), (int4, Scheme.AFFINE, True),
    (uint8, Scheme.AFFINE, False), (uint4, Scheme.SYMMETRIC, True),
])
def test_forward_is_bit_identical_to_affine_fake_quantize(qtype, scheme, per_channel):
    torch.manual_seed(1)
    x = torch.randn(8, 16)
    gran = PerChannel(0) if per_channel else None
    qp = choose_qparams(x * 0.6, qtype, scheme, gran)  # narrower than x: some values clamp
    out = lsq_fake_quantize(x, qp.scale, qp.zero_point.float(), qtype.qmin, qtype.qmax)
    assert torch.equal(out, fake_quantize(x, qp))


def test_forward_rounds_half_to_even_like_pytorch():
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, 2.0, 100.0, -100.0])  # v = ±0.5, 1.5, ...
    out = lsq_fake_quantize(x, torch.tensor(0.5), 0.0, -128, 127)
    expected = torch.fake_quantize_per_tensor_affine(x, 0.5, 0, -128, 127)
    assert torch.equal(out, expected)
    assert out[:5].tolist() == [0.0, 1.0, 1.0, 0.0, -1.0], "0.5 -> 0, 1.5 -> 2, 2.5 -> 2"


def _torch_vs_lsq(per_channel: bool, seed: int, negative_zero: bool = False,
                  our_zero_offset: float = 0.0):
    """Run ours and PyTorch's kernel on one case; ``our_zero_offset`` is added to our z only.

    Per tensor the zero point is >= 0 unless ``negative_zero`` (see
    test_pytorch_per_tensor_backward_shifts_negative_zero_points).
    """
    x, scale, zero, grad = _case(per_channel, seed)
    if not per_channel:
        zero = -(zero.abs() + 1) if negative_zero else zero.abs()
    qmin, qmax = int4.qmin, int4.qmax
    gs = lsq_grad_scale(x.numel() // scale.numel(), qmax)
    xa, sa = x.clone().requires_grad_(), scale.clone().requires_grad_()
    ours = lsq_fake_quantize(xa, sa, zero + our_zero_offset, qmin, qmax)
    ours.backward(grad)
    xb = x.clone().requires_grad_()
    if per_channel:
        sb = scale.reshape(-1).clone().requires_grad_()
        theirs = torch._fake_quantize_learnable_per_channel_affine(
            xb, sb, zero.reshape(-1).clone(), 0, qmin, qmax, gs)
    else:
        sb = scale.reshape(1).clone().requires_grad_()
        theirs = torch._fake_quantize_learnable_per_tensor_affine(
            xb, sb, zero.reshape(1).clone(), qmin, qmax, gs)
    theirs.backward(grad)
    return x, scale, zero, grad, gs, (ours, xa.grad, sa.grad), (theirs, xb.grad, sb.grad)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_agrees_with_pytorch_learnable_fake_quantize(per_channel, seed):
    """PyTorch's grad_factor is our grad_scale (here LSQ's default, N per step).

    Forward and dx are exact. The step gradients differ by float32 rounding only: PyTorch
    computes ``((q - z)·s - x)·(1/s)`` per element where we compute ``round(v) - v``, and
    both sum in float32; a sum of cancelling terms has no useful relative error of its own,
    so the tolerance is 1e-6 relative to ``grad_scale · Σ|grad · ∂x̂/∂s|``.
    """
    x, scale, zero, grad, gs, ours, theirs = _torch_vs_lsq(per_channel, seed)
    assert torch.equal(ours[0], theirs[0]), "forward must be bit-identical"
    assert torch.equal(ours[1], theirs[1]), "dx (straight-through mask) must be identical"
    v = x * (1.0 / scale)
    q = torch.round(v) + zero
    ds = torch.where(q < int4.qmin, int4.qmin - zero,
                     torch.where(q > int4.qmax, int4.qmax - zero, torch.round(v) - v))
    magnitude = (grad * ds).abs().sum(dim=1).double() * gs  # per step
    diff = (ours[2].reshape(-1).double() - theirs[2].reshape(-1).double()).abs()
    if not per_channel:
        magnitude = magnitude.sum().reshape(1)
    assert bool((diff <= 1e-6 * magnitude).all()), (diff, magnitude)


def test_pytorch_per_tensor_backward_shifts_negative_zero_points():
    """Why the per-tensor comparison above uses zero points >= 0.

    PyTorch's per-tensor learnable backward reads the zero point as ``int(z + 0.5)``, which
    truncates toward zero: for a negative integer ``z`` it uses ``z + 1`` (its forward and its
    per-channel kernel use ``z``).  So its gradients for ``z < 0`` are ours at ``z + 1``.  lowbit
    follows the formula with the zero point of the forward pass.
    """
    *_, ours, theirs = _torch_vs_lsq(False, seed=0, negative_zero=True, our_zero_offset=1.0)
    assert torch.equal(ours[1], theirs[1]), "with z + 1 the straight-through masks coincide"
    assert torch.allclose(ours[2].reshape(-1), theirs[2], rtol=1e-5, atol=1e-6)
    *_, ours, theirs = _torch_vs_lsq(False, seed=0, negative_zero=True)
    assert torch.equal(ours[0], theirs[0]), "the forward passes agree at z"
    assert not torch.equal(ours[1], theirs[1]), "at z itself PyTorch's backward mask differs"


def test_default_grad_scale_counts_elements_per_step():
    assert lsq_grad_scale(48, 7) == 1 / math.sqrt(48 * 7)
    x, scale, zero, grad = _case(True, seed=5)
    a, b = scale.clone().requires_grad_(), scale.clone().requires_grad_()
    lsq_fake_quantize(x, a, zero, -8, 7).backward(grad)
    lsq_fake_quantize(x, b, zero, -8, 7, grad_scale=1 / math.sqrt(12 * 7)).backward(grad)
    assert torch.equal(a.grad, b.grad), "per channel of a (4, 12) weight: N = 12"


def test_half_input_keeps_its_dtype_and_zero_point_gets_no_gradient():
    torch.manual_seed(2)
    x = torch.randn(4, 8).half().requires_grad_()
    scale = torch.full((4, 1), 0.05, requires_grad=True)
    zero = torch.zeros(4, 1, requires_grad=True)
    out = lsq_fake_quantize(x, scale, zero, -128, 127)
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert scale.grad is not None and scale.grad.dtype == torch.float32
    assert zero.grad is None, "LSQ does not learn the zero point"
    assert x.grad.dtype == torch.float16


def test_learning_the_step_reduces_the_quantization_error():
    """A step set 10x too small clamps most values; LSQ's gradient must grow it."""
    torch.manual_seed(3)
    x = torch.randn(256)
    scale = torch.tensor(0.1 * float(x.abs().max()) / 7, requires_grad=True)
    errors = []
    for _ in range(60):  # plain gradient descent on the step alone
        loss = (lsq_fake_quantize(x, scale, 0.0, -8, 7) - x).square().mean()
        loss.backward()
        with torch.no_grad():
            scale -= 0.05 * scale.grad
        scale.grad = None
        errors.append(float(loss.detach()))
    assert errors[-1] < 0.2 * errors[0], f"MSE went {errors[0]:.4f} -> {errors[-1]:.4f}"


def test_grad_scale_errors():
    with pytest.raises(ConfigError, match=r"n=0 is invalid: allowed an integer in \[1,"):
        lsq_grad_scale(0, 7)
    with pytest.raises(ConfigError, match=r"qmax=0 is invalid.*127 for int8"):
        lsq_grad_scale(4, 0)
    with pytest.raises(ConfigError, match=r"n=True is invalid"):
        lsq_grad_scale(True, 7)


def test_lsq_fake_quantize_errors():
    x, s = torch.zeros(4, 5), torch.ones(4, 1)
    with pytest.raises(InputError, match="x must be a floating-point tensor, got torch.int32"):
        lsq_fake_quantize(torch.zeros(4, 5, dtype=torch.int32), s, 0.0, -8, 7)
    with pytest.raises(InputError, match="scale must be a tensor.*got float"):
        lsq_fake_quantize(x, 0.5, 0.0, -8, 7)
    with pytest.raises(InputError, match=r"scale of shape \(3,\) does not broadcast"):
        lsq_fake_quantize(x, torch.ones(3), 0.0, -8, 7)
    with pytest.raises(InputError, match=r"scale of shape \(2, 4, 1\) does not broadcast"):
        lsq_fake_quantize(x, torch.ones(2, 4, 1), 0.0, -8, 7)
    with pytest.raises(InputError, match=r"zero_point of shape \(2,\) does not broadcast"):
        lsq_fake_quantize(x, s, torch.zeros(2), -8, 7)
    with pytest.raises(ConfigError, match=r"qmax=-8 is invalid: allowed an integer above qmin=7"):
        lsq_fake_quantize(x, s, 0.0, 7, -8)
    with pytest.raises(ConfigError, match=r"qmin=-8.0 is invalid"):
        lsq_fake_quantize(x, s, 0.0, -8.0, 7)
    with pytest.raises(ConfigError, match=r"qmax=0 is invalid"):  # default grad scale needs Q_P
        lsq_fake_quantize(x, s, 0.0, -8, 0)
    for bad in (-1.0, float("nan"), True, "1"):
        with pytest.raises(ConfigError, match=r"grad_scale=.* is invalid: allowed a positive"):
            lsq_fake_quantize(x, s, 0.0, -8, 7, grad_scale=bad)
