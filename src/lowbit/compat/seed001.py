"""The one-call INT8 helpers, by the names users know them under.

``quantize_symmetric``, ``quantize_weight_per_channel``, ``dequantize`` and
``calculate_quantization_error`` are thin front doors to :mod:`lowbit.primitives.affine`
(one formula: ``q = clamp(round(x / s), qmin, qmax)``, ``x̂ = q · s``; symmetric, so the
zero point is 0) and :mod:`lowbit.primitives.metrics`.  They return plain tensors: a scalar
scale per tensor, or one scale per channel of shape ``(out,)``.  ``dequantize`` also takes a
:class:`QParams`, which makes it the inverse of ``lowbit.quantize(x, qparams)``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError, InputError, check_int_range
from ..primitives import affine, metrics
from ..types import PerChannel, QParams, QType, Scheme


def _signed_grid(bits: Any) -> QType:
    check_int_range("bits", bits, 2, 16, fix="pass bits between 2 and 16, e.g. bits=8 or bits=4")
    return QType(bits, signed=True)


def _check_float(t: Any, name: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise InputError(f"{name} must be a floating-point torch.Tensor, got "
                         f"{getattr(t, 'dtype', type(t).__name__)}; pass the float weights "
                         "(e.g. tensor.float())")


def quantize_symmetric(tensor: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``tensor`` symmetrically with one scale: returns ``(q, scale)``.

    ``scale = max|tensor| / qmax`` (a 0-d float32 tensor; qmax = 127 for 8 bits) and
    ``q = clamp(round(tensor / scale), qmin, qmax)`` (half to even) as int8 for
    ``bits <= 8``, int16 above.  Raises :class:`ConfigError` unless ``2 <= bits <= 16``.
    """
    qtype = _signed_grid(bits)
    _check_float(tensor, "tensor")
    qp = affine.choose_qparams(tensor, qtype, Scheme.SYMMETRIC)
    q = affine.quantize(tensor.reshape(qp.block_size), qp).reshape(tensor.shape)
    return q, qp.scale.reshape(())


def quantize_weight_per_channel(weight: torch.Tensor, bits: int = 8,
                                axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``weight`` symmetrically with one scale per index along ``axis``.

    Returns ``(q, scales)`` where ``scales`` has shape ``(weight.shape[axis],)`` — ``(out,)``
    for a Linear/Conv weight with the default ``axis=0`` — and ``q`` is int8 (``bits <= 8``)
    or int16.  Dequantize with ``dequantize(q, scales, axis=axis)``.
    """
    qtype = _signed_grid(bits)
    _check_float(weight, "weight")
    if weight.dim() == 0:
        raise InputError("weight is 0-d; per-channel quantization needs at least one "
                         "dimension — use quantize_symmetric for a scalar")
    qp = affine.choose_qparams(weight, qtype, Scheme.SYMMETRIC, PerChannel(axis))
    return affine.quantize(weight, qp), qp.scale.reshape(-1)


def _qparams_for_scale(q: torch.Tensor, scale: Any, zero_point: Any, axis: int) -> QParams:
    """QParams for a per-tensor scale (one value) or per-channel scales ``(q.shape[axis],)``."""
    try:
        scale = torch.as_tensor(scale, dtype=torch.float32, device=q.device).detach()
        zero = (torch.zeros_like(scale, dtype=torch.int32) if zero_point is None
                else torch.as_tensor(zero_point, device=q.device).detach())
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"scale={scale!r:.80} / zero_point={zero_point!r:.80} cannot be read as "
                         f"numbers ({exc}); pass the scale returned by the quantize function "
                         "(a float, a tensor, or a QParams)") from None
    if zero.is_floating_point() and not torch.equal(zero, zero.round()):
        raise InputError("zero_point holds non-integer values; zero points are integer codes "
                         "— pass the zero point returned by quantization")
    if zero.numel() != scale.numel():
        raise InputError(f"zero_point has {zero.numel()} values but scale has {scale.numel()}; "
                         "give one zero point per scale (or None for symmetric)")
    zero = zero.to(torch.int32).reshape(scale.shape)
    rank = q.dim()
    if scale.numel() == 1:  # per tensor
        shape, block = (1,) * rank, tuple(q.shape)
    else:
        if isinstance(axis, bool) or not isinstance(axis, int) or not -rank <= axis < rank:
            raise ConfigError("axis", axis, f"an integer in [{-rank}, {rank - 1}]",
                              fix="pass the axis the per-channel scales run along (0 = out)")
        axis %= rank
        if scale.dim() != 1 or scale.numel() != q.shape[axis]:
            raise InputError(f"scale of shape {tuple(scale.shape)} fits neither per tensor (one "
                             f"value) nor per channel ({q.shape[axis]} values along axis {axis} "
                             f"of codes shaped {tuple(q.shape)}); pass a QParams for other "
                             "layouts")
        shape = tuple(q.shape[axis] if i == axis else 1 for i in range(rank))
        block = tuple(1 if i == axis else n for i, n in enumerate(q.shape))
    # The qtype is metadata only (dequantization does not read it): the grid of q's dtype.
    qtype = QType(min(16, q.element_size() * 8), signed=q.dtype != torch.uint8)
    return QParams(scale=scale.reshape(shape), zero_point=zero.reshape(shape), qtype=qtype,
                   block_size=block)


def dequantize(q: torch.Tensor, scale_or_qparams: Any, zero_point: Any = None,
               dtype: torch.dtype = torch.float32, *, axis: int = 0) -> torch.Tensor:
    """Float values ``(q - zero_point) · scale`` of integer codes ``q``.

    ``scale_or_qparams`` is a :class:`QParams` (any granularity; then ``zero_point`` must be
    None), or a scale: one value (per tensor) or a 1-d tensor of ``q.shape[axis]`` values
    (per channel, broadcast along ``axis``, 0 by default).  ``zero_point`` defaults to 0.
    """
    if not isinstance(q, torch.Tensor) or q.is_floating_point() or q.is_complex() \
            or q.dtype == torch.bool:
        raise InputError(f"q must be a tensor of integer codes, got "
                         f"{getattr(q, 'dtype', type(q).__name__)}; pass the output of a "
                         "quantize function")
    if isinstance(zero_point, torch.dtype):
        raise ConfigError("zero_point", zero_point, "a tensor, a number or None",
                          fix=f"pass the output dtype by keyword: dtype={zero_point}")
    if isinstance(scale_or_qparams, QParams):
        if zero_point is not None:
            raise ConfigError("zero_point", zero_point, "None when a QParams is given",
                              fix="the QParams already carries its zero_point; drop the argument")
        return affine.dequantize(q, scale_or_qparams, dtype)
    qp = _qparams_for_scale(q, scale_or_qparams, zero_point, axis)
    return affine.dequantize(q, qp, dtype)


def calculate_quantization_error(original: torch.Tensor, quantized: torch.Tensor,
                                 scale: Any, *, axis: int = 0) -> dict[str, float]:
    """Error of quantized codes against the original tensor, as Python floats.

    ``scale`` is what the quantize function returned (a scale, per-channel scales or a
    QParams).  Keys: ``max_abs_error``, ``mean_abs_error``, ``relative_error_pct`` (max over
    values with ``|x| > 1e-3 · max|x|``, see :func:`metrics.relative_error_pct`) and
    ``snr_db`` (signal-to-quantization-noise ratio, ``inf`` when exact).
    """
    _check_float(original, "original")
    restored = dequantize(quantized, scale, axis=axis)
    return {
        "max_abs_error": metrics.max_abs_error(original, restored),
        "mean_abs_error": metrics.mean_abs_error(original, restored),
        "relative_error_pct": metrics.relative_error_pct(original, restored),
        "snr_db": metrics.snr_db(original, restored),
    }
