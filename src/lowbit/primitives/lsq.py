"""LSQ: fake quantization with a learned step size.

Esser et al. 2019, "Learned Step Size Quantization" (ICLR 2020).  With step ``s``,
zero point ``z`` (an integer held in a float tensor, not learned) and ``v = x / s``::

    q  = clamp(round(v) + z, qmin, qmax)          (round half to even)
    x̂ = (q - z) · s

Forward is bit for bit :func:`lowbit.primitives.affine.fake_quantize`: ``v`` is computed as
``x * (1/s)`` with the reciprocal in float32, exactly as PyTorch's quantize kernels do.

Backward (paper eq. 3, straight-through estimator for ``round``), per element::

    ∂x̂/∂x = 1                     if qmin <= round(v) + z <= qmax, else 0
    ∂x̂/∂s = round(v) - v           inside the grid    (x̂ = round(v)·s there)
           = qmin - z              clamped below       (x̂ = (qmin - z)·s)
           = qmax - z              clamped above       (x̂ = (qmax - z)·s)

The step's gradient sums ``grad · ∂x̂/∂s`` over the elements that share the step, times the
gradient scale ``g`` (paper section 2.2): ``g = 1/sqrt(N · Q_P)`` with ``N`` the number of
elements per step (``x.numel() / scale.numel()``) and ``Q_P = qmax``.

Conventions versus PyTorch: ``torch._fake_quantize_learnable_per_{tensor,channel}_affine``
take the same ``g`` as their ``grad_factor`` argument and agree with this module to float32
rounding, with one exception: PyTorch's per-tensor backward reads the zero point as
``int(z + 0.5)``, i.e. ``z + 1`` for a negative ``z``, so its gradients differ there; lowbit
differentiates the forward it computed.  ``torch.ao.quantization._LearnableFakeQuantize``
computes its ``grad_factor`` with ``N = x.numel()`` even per channel; here ``N`` is the number
of elements *per step*, the paper's definition applied to each step.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, InputError, check_int_range


def lsq_grad_scale(n: int, qmax: int) -> float:
    """LSQ gradient scale ``1 / sqrt(n · qmax)`` for ``n`` elements sharing one step."""
    check_int_range("n", n, 1, 1 << 62, fix="n is the number of elements per step (>= 1)")
    check_int_range("qmax", qmax, 1, 1 << 30,
                    fix="qmax is the grid's largest code, e.g. 127 for int8 or 7 for int4")
    return 1.0 / math.sqrt(n * qmax)


class LSQFakeQuantize(torch.autograd.Function):
    """Autograd function of LSQ; see the module docstring for the equations.

    Inputs: ``x`` (float32), ``scale`` and ``zero_point`` (float32, broadcastable to ``x``),
    ``qmin``/``qmax`` (ints), ``grad_scale`` (float).  Returns gradients for ``x`` and
    ``scale`` only.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, grad_scale):
        v = x * (1.0 / scale)                                   # x.shape
        q = torch.round(v) + zero_point                         # unclamped codes
        ctx.save_for_backward(x, scale, zero_point)
        ctx.qmin, ctx.qmax, ctx.grad_scale = qmin, qmax, grad_scale
        return (q.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point = ctx.saved_tensors
        v = x * (1.0 / scale)                                   # x.shape
        r = torch.round(v)
        q = r + zero_point
        below, above = q < ctx.qmin, q > ctx.qmax
        inside = ~(below | above)
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            ds = torch.where(below, ctx.qmin - zero_point,
                             torch.where(above, ctx.qmax - zero_point, r - v))  # x.shape
            per_elem = grad * ds
            if scale.numel() == 1:
                grad_s = per_elem.sum().reshape(scale.shape)
            else:
                grad_s = per_elem.sum_to_size(scale.shape)      # scale.shape
            grad_s = grad_s * ctx.grad_scale
        return grad_x, grad_s, None, None, None, None


def lsq_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float,
                      qmin: int, qmax: int, grad_scale: float | None = None) -> torch.Tensor:
    """Fake-quantize ``x`` with a learnable step ``scale`` (LSQ), in ``x``'s dtype.

    ``scale`` is a positive tensor broadcastable to ``x`` (shape ``()``/``(1,)`` per tensor,
    ``(O, 1)`` per output channel of a Linear weight, ``(O, 1, 1, 1)`` for a Conv weight);
    keeping it positive while training is the caller's job (e.g. clamp it to ``EPS``).
    ``zero_point`` holds integers (a float tensor or a number), broadcastable to ``x``; it
    receives no gradient.  ``grad_scale`` defaults to :func:`lsq_grad_scale` with
    ``N = x.numel() / scale.numel()``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError(f"lsq_fake_quantize: x must be a floating-point tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}; cast it with x.float()")
    if not isinstance(scale, torch.Tensor):
        raise InputError("lsq_fake_quantize: scale must be a tensor (an nn.Parameter to learn "
                         f"it), got {type(scale).__name__}; use torch.tensor(s)")
    check_int_range("qmin", qmin, -(1 << 30), 1 << 30, fix="pass the grid's qmin, e.g. -128")
    check_int_range("qmax", qmax, -(1 << 30), 1 << 30, fix="pass the grid's qmax, e.g. 127")
    if qmin >= qmax:
        raise ConfigError("qmax", qmax, f"an integer above qmin={qmin}",
                          fix="pass the grid's (qmin, qmax), e.g. (-128, 127) for int8")
    zero = torch.as_tensor(zero_point, dtype=torch.float32, device=x.device)
    for name, t in (("scale", scale), ("zero_point", zero)):
        try:
            shape = torch.broadcast_shapes(x.shape, t.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise InputError(f"lsq_fake_quantize: {name} of shape {tuple(t.shape)} does not "
                             f"broadcast to x of shape {tuple(x.shape)}; use shape () per "
                             "tensor or keep x's rank with 1 on the shared dims, e.g. (O, 1)")
    if grad_scale is None:
        n = max(1, x.numel() // max(1, scale.numel()))
        grad_scale = lsq_grad_scale(n, qmax)
    elif (isinstance(grad_scale, bool) or not isinstance(grad_scale, (int, float))
          or not math.isfinite(grad_scale) or grad_scale <= 0):
        raise ConfigError("grad_scale", grad_scale, "a positive finite float or None",
                          fix="leave it None for LSQ's 1/sqrt(N*qmax), or pass e.g. 1.0")
    out = LSQFakeQuantize.apply(x.float(), scale.float(), zero.detach(), qmin, qmax,
                                float(grad_scale))
    return out.to(x.dtype)
