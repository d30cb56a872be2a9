"""The affine grid: choose qparams, quantize, dequantize, fake-quantize.

``q = clamp(round(x * (1/s)) + z, qmin, qmax)`` with round half to even and the
reciprocal of the scale taken in float32, then ``x̂ = (q - z) * s`` — the same
arithmetic as PyTorch's own quantize kernels, which tests use as an oracle.  (Bit for bit
that is ``torch.fake_quantize_per_{tensor,channel}_affine``; ``torch.quantize_per_tensor`` and
``torch.quantize_per_channel`` to qint8/quint8 add ``z`` before rounding, so at ``.5`` ties
with an odd ``z`` they can differ from both by one code; with ``z = 0`` all agree.)

Granularity is lowered to a block shape: ``scale``/``zero_point`` have the
tensor's rank and size ``ceil(shape[i] / block[i])`` along dimension ``i``.  A block size
that does not divide its dimension leaves a shorter last block (a ragged group): its range
is taken over the elements it has, and its parameters apply to them only.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, InputError
from ..types import Granularity, QParams, QType, Scheme, n_blocks

EPS = torch.finfo(torch.float32).eps  # scale floor: all-zero/constant tensors stay finite
F32_MAX = float(torch.finfo(torch.float32).max)


def check_tensor(x: object, what: str = "tensor", *, empty_ok: bool = True) -> None:
    """The boundary check of every primitive's tensor argument: raise :class:`InputError`
    unless ``x`` is a ``torch.Tensor`` holding data (not on the ``meta`` device), non-empty
    when ``empty_ok`` is False, and finite."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(x).__name__}; pass a "
                         "tensor (e.g. torch.as_tensor(value))")
    if x.device.type == "meta":
        raise InputError(f"{what} is on the 'meta' device (shape {tuple(x.shape)}, no data); "
                         "quantization needs real values. Fix: materialize the tensor or load "
                         "the model's weights (e.g. model.to_empty(device='cpu') then load)")
    if not empty_ok and x.numel() == 0:
        raise InputError(f"{what} is empty (shape {tuple(x.shape)}); quantization needs at "
                         "least one value to choose a scale. Fix: pass a non-empty tensor")
    check_finite(x, what)


def check_qparams(qp: QParams) -> None:
    """Raise :class:`InputError` unless every scale is finite and > 0 (zero points are int)."""
    if not isinstance(qp, QParams):
        raise InputError(f"qparams must be a lowbit QParams, got {type(qp).__name__}; pass "
                         "the result of choose_qparams or qparams_from_range")
    scale = qp.scale
    if torch.compiler.is_compiling():  # a host sync; qparams were checked when stored
        return
    if scale.device.type == "meta":
        raise InputError("QParams.scale is on the 'meta' device; choose qparams from real data")
    bad = ~(torch.isfinite(scale) & (scale > 0))
    if bool(bad.any()):
        first = float(scale[bad].flatten()[0])
        raise InputError(f"QParams.scale holds {int(bad.sum())} value(s) that are not finite "
                         f"and > 0 (e.g. {first!r}); a scale is the grid step. Fix: choose "
                         "qparams from the data (choose_qparams) instead of editing them")


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    """Raise :class:`InputError` if ``x`` holds NaN or Inf (not checked while
    ``torch.compile`` traces: the check is a host sync, see :func:`lowbit.compile`)."""
    if torch.compiler.is_compiling():
        return
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{what} contains {n_bad} NaN/Inf value(s) out of {x.numel()}; "
                         "quantization needs finite values — check the model's inputs "
                         "or the layer producing them")


def pad_to_blocks(x: torch.Tensor, block: tuple[int, ...], mode: str = "zeros") -> torch.Tensor:
    """``x`` grown along every dimension whose block does not divide it, to whole blocks.

    mode ``"zeros"`` fills with 0 (exact on every grid: it adds nothing to a sum or a
    squared error); ``"edge"`` repeats the last element along that dimension, so that the
    min and max of the short last block are unchanged.  Returns ``x`` itself when every
    block divides its dimension."""
    if len(block) != x.dim():
        raise InputError(f"block_size {block} has {len(block)} dims but the tensor has {x.dim()}")
    for b in block:
        if b < 1:
            raise InputError(f"block size {b} in {tuple(block)} is not positive; every block "
                             "size must be at least 1")
    for dim, (n, m) in enumerate(zip(x.shape, n_blocks(tuple(x.shape), block))):
        extra = m * block[dim] - n
        if extra <= 0:
            continue
        if mode == "edge":
            fill = x.narrow(dim, n - 1, 1).expand(*x.shape[:dim], extra, *x.shape[dim + 1:])
        else:
            fill = x.new_zeros(*x.shape[:dim], extra, *x.shape[dim + 1:])
        x = torch.cat([x, fill], dim=dim)
    return x


def _blocked(x: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """View ``x`` as ``(n0, b0, n1, b1, ...)`` so reductions over odd dims are per block
    (a ragged last block is padded with its own last element: min and max unchanged)."""
    x = pad_to_blocks(x, block, "edge")
    shape: list[int] = []
    for n, b in zip(x.shape, block):
        shape += [n // b, b]
    return x.reshape(shape)


def block_reduce(x: torch.Tensor, block: tuple[int, ...], op: str) -> torch.Tensor:
    """Reduce each block of ``x`` with ``op`` in {'amin', 'amax', 'absmax'}; keeps rank."""
    if x.dim() == 0:
        x = x.reshape(1)
        block = (1,)
    v = _blocked(x, block)
    dims = tuple(range(1, v.dim(), 2))
    if op == "absmax":
        return v.abs().amax(dim=dims)
    return getattr(v, op)(dim=dims)


def expand_param(p: torch.Tensor, shape: tuple[int, ...], block: tuple[int, ...]) -> torch.Tensor:
    """Repeat a per-block parameter so it broadcasts against a tensor of ``shape`` (cut to
    ``shape`` where a ragged last block is shorter than ``block``)."""
    for dim, b in enumerate(block):
        if b > 1 and p.shape[dim] > 1:
            ragged = dim < len(shape) and p.shape[dim] == -(-shape[dim] // b) \
                and p.shape[dim] * b > shape[dim]
            p = p.repeat_interleave(b, dim=dim)
            if ragged:
                p = p.narrow(dim, 0, shape[dim])
    return p


def qparams_from_range(min_val: torch.Tensor, max_val: torch.Tensor, qtype: QType,
                       scheme: Scheme, block_size: tuple[int, ...],
                       frac_bits: int | None = None) -> QParams:
    """QParams for per-block ranges ``[min_val, max_val]`` (tensors of the qparams' shape)."""
    check_tensor(min_val, "observed minimum")
    check_tensor(max_val, "observed maximum")
    if not isinstance(qtype, QType):
        raise ConfigError("qtype", qtype, "a lowbit QType", fix="pass e.g. lowbit.int8")
    if not isinstance(block_size, (tuple, list)):
        raise ConfigError("block_size", block_size, "a tuple of ints (one per dimension)",
                          fix="pass e.g. (1, 128), or () for a 0-d range")
    min_val = min_val.detach().float()
    max_val = max_val.detach().float()
    check_finite(min_val, "observed minimum")
    check_finite(max_val, "observed maximum")
    scheme = Scheme.parse(scheme)
    if scheme is Scheme.FIXED_POINT:
        if frac_bits is None:
            raise InputError("FIXED_POINT qparams need frac_bits (8 for Q8.8)")
        scale = torch.full_like(min_val, 2.0 ** -frac_bits)
        zero = torch.zeros_like(min_val, dtype=torch.int32)
    elif scheme is Scheme.SYMMETRIC:
        if qtype.signed:
            amax = torch.maximum(-min_val, max_val)
        else:  # unsigned symmetric: the grid [0, amax] (e.g. after ReLU)
            amax = max_val.clamp(min=0)
        scale = torch.clamp(amax / qtype.qmax, min=EPS)
        zero = torch.zeros_like(min_val, dtype=torch.int32)
    else:  # AFFINE: the range always contains 0 so that 0 is exact
        lo = min_val.clamp(max=0)
        hi = max_val.clamp(min=0)
        levels = float(qtype.qmax - qtype.qmin)
        scale = (hi - lo) / levels
        # hi - lo of a range near float32's limits overflows: that width in float64
        wide = ((hi.double() - lo.double()) / levels).float()
        scale = torch.clamp(torch.where(torch.isfinite(scale), scale, wide), min=EPS)
        zero = (qtype.qmin - torch.round(lo / scale)).clamp(qtype.qmin, qtype.qmax).to(torch.int32)
    _check_grid_fits_float32(scale, zero, qtype, min_val, max_val)
    return QParams(scale=scale, zero_point=zero, qtype=qtype, block_size=tuple(block_size))


def _check_grid_fits_float32(scale: torch.Tensor, zero: torch.Tensor, qtype: QType,
                             min_val: torch.Tensor, max_val: torch.Tensor) -> None:
    """Raise :class:`InputError` when a grid end ``(q - z) * s`` is not a finite float32."""
    s = scale.double()
    z = zero.double()
    ends = torch.maximum(((qtype.qmin - z) * s).abs(), ((qtype.qmax - z) * s).abs())
    bad = ~(torch.isfinite(s) & (ends <= F32_MAX))
    if bool(bad.any()):
        lo, hi = float(min_val.min()), float(max_val.max())
        raise InputError(f"the range [{lo:.4g}, {hi:.4g}] is too wide for a {qtype.name} grid "
                         "in float32: its scale or its end points overflow float32 (max "
                         f"{F32_MAX:.4g}), so dequantized values would be inf or NaN. Fix: "
                         "clip or rescale the tensor (e.g. divide by a power of two) first")


def choose_qparams(x: torch.Tensor, qtype: QType, scheme: Scheme = Scheme.SYMMETRIC,
                   granularity: Granularity | None = None,
                   frac_bits: int | None = None) -> QParams:
    """Min/max qparams of ``x`` at ``granularity`` (per tensor by default)."""
    from ..types import PerTensor

    check_tensor(x, "input to choose_qparams", empty_ok=False)
    block = (granularity or PerTensor()).block_size(tuple(x.shape))
    xf = x.detach().float()
    if xf.dim() == 0:
        xf, block = xf.reshape(1), (1,)
    return qparams_from_range(block_reduce(xf, block, "amin"), block_reduce(xf, block, "amax"),
                              qtype, scheme, block, frac_bits)


def _broadcast_params(x: torch.Tensor, qp: QParams) -> tuple[torch.Tensor, torch.Tensor]:
    shape = tuple(x.shape)
    scale = expand_param(qp.scale.float(), shape, qp.block_size)
    zero = expand_param(qp.zero_point, shape, qp.block_size)
    if not shape and scale.numel() == 1:  # a 0-d tensor stays 0-d (qparams may be (1,))
        return scale.reshape(()), zero.reshape(())
    pshape = tuple(scale.shape)
    fits = len(pshape) <= len(shape) and all(
        p in (1, n) for p, n in zip(pshape[::-1], shape[::-1]))  # broadcasts without growing x
    if not fits:
        raise InputError(f"qparams with scale of shape {tuple(qp.scale.shape)} with block_size "
                         f"{tuple(qp.block_size)} do not fit a tensor of shape {shape}; use the "
                         "qparams chosen for this tensor (scale has the tensor's rank and size "
                         "ceil(shape[i] / block_size[i]))")
    return scale, zero


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integer codes of ``x`` in ``qp.qtype.storage_dtype``."""
    check_tensor(x, "input to quantize")
    check_qparams(qp)
    scale, zero = _broadcast_params(x, qp)
    q = torch.round(x.float() * (1.0 / scale)) + zero
    return q.clamp_(qp.qtype.qmin, qp.qtype.qmax).to(qp.qtype.storage_dtype)


def dequantize(q: torch.Tensor, qp: QParams, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float values ``(q - z) * s`` of integer codes ``q``."""
    check_tensor(q, "codes to dequantize")
    check_qparams(qp)
    scale, zero = _broadcast_params(q, qp)
    return ((q.to(torch.int32) - zero).float() * scale).to(dtype)


class _FakeQuantSTE(torch.autograd.Function):
    """Quantize-dequantize; gradient passes straight through where ``q`` is not clamped."""

    @staticmethod
    def forward(ctx, x, scale, zero, qmin, qmax):
        q = torch.round(x * (1.0 / scale)) + zero
        mask = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(mask)
        return (q.clamp(qmin, qmax) - zero) * scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype, with a straight-through gradient.

    Checks types and the device only (no data-dependent check: this runs in every forward)."""
    if not isinstance(x, torch.Tensor) or x.device.type == "meta":
        check_tensor(x, "input to fake_quantize")
    if not isinstance(qp, QParams):
        check_qparams(qp)
    scale, zero = _broadcast_params(x, qp)
    out = _FakeQuantSTE.apply(x.float(), scale, zero.float(), qp.qtype.qmin, qp.qtype.qmax)
    return out.to(x.dtype)
