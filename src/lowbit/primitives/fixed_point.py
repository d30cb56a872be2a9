"""Qm.n fixed point: the affine grid with ``s = 2**-frac_bits`` and ``z = 0``.

A Qm.n number lives on a signed integer grid of ``m + n`` bits whose last ``n`` bits are
the fraction: Q8.8 is ``int16`` with ``frac_bits=8``, a resolution of ``1/256`` and a range
of ``[-128, 128 - 1/256]``.  Values beyond the range saturate to the ends of the grid, and
:func:`to_fixed` counts how many did.

There is no separate formula here: every function builds fixed-point :class:`QParams` and
goes through :mod:`lowbit.primitives.affine`, so fixed point and affine codes agree bit for bit.
Because ``2**frac_bits`` is a power of two, ``x * 2**frac_bits`` is exact in float32 and the
only rounding is the round-half-to-even of the grid.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..errors import ConfigError, InputError, check_int_range
from ..types import QParams, QType, Scheme, int16, qtype_from_name
from .affine import check_tensor, dequantize, fake_quantize, qparams_from_range, quantize

MAX_FRAC_BITS = 30  # the same bound as QuantSpec.frac_bits


class FixedPointResult(NamedTuple):
    """Codes of :func:`to_fixed` and how many values saturated at the ends of the grid."""

    qdata: torch.Tensor  # integer codes, in qtype.storage_dtype
    n_saturated: int  # values whose code fell outside [qmin, qmax] before clamping
    sat_ratio: float  # n_saturated / numel (0.0 for an empty tensor)


def _check_frac_bits(frac_bits: Any) -> int:
    check_int_range("frac_bits", frac_bits, 0, MAX_FRAC_BITS,
                    fix="give the number of fractional bits, e.g. frac_bits=8 for Q8.8 on int16")
    return frac_bits


def _check_qtype(qtype: Any) -> QType:
    if not isinstance(qtype, (QType, str)):
        raise ConfigError("qtype", qtype, "a lowbit QType or its name ('int16', 'int8', ...)",
                          fix="e.g. qtype=lowbit.int16 for Q8.8")
    return qtype_from_name(qtype)


def fixed_point_qparams(qtype: QType = int16, frac_bits: int = 8,
                        shape: tuple[int, ...] = ()) -> QParams:
    """Per-tensor QParams of Qm.n on ``qtype`` for a tensor of ``shape``.

    ``scale = 2**-frac_bits`` and ``zero_point = 0``, with the tensor's rank (all sizes 1);
    ``shape=()`` gives 0-d qparams that broadcast against a tensor of any shape.
    """
    qtype = _check_qtype(qtype)
    frac_bits = _check_frac_bits(frac_bits)
    shape = tuple(int(n) for n in shape)
    unused_range = torch.zeros((1,) * len(shape))  # FIXED_POINT ignores the observed range
    return qparams_from_range(unused_range, unused_range, qtype, Scheme.FIXED_POINT, shape,
                              frac_bits=frac_bits)


def to_fixed(x: torch.Tensor, frac_bits: int = 8, qtype: QType = int16) -> FixedPointResult:
    """Qm.n codes of ``x`` (saturating) and the number and ratio of saturated values.

    A value saturates when ``round(x * 2**frac_bits)`` lies outside ``[qmin, qmax]``: for Q8.8,
    ``x >= 128 - 1/512`` or ``x < -128 - 1/512`` (ties go to even, so ``128 - 1/512`` itself
    rounds up to ``128`` and saturates).
    """
    check_tensor(x, "input to to_fixed")
    qp = fixed_point_qparams(qtype, frac_bits, tuple(x.shape))
    qdata = quantize(x, qp)
    raw = torch.round(x.detach().float() * float(2 ** frac_bits))  # exact: a power of two
    n_sat = int(((raw < qp.qtype.qmin) | (raw > qp.qtype.qmax)).sum())
    return FixedPointResult(qdata, n_sat, n_sat / x.numel() if x.numel() else 0.0)


def from_fixed(q: torch.Tensor, frac_bits: int = 8,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float values ``q * 2**-frac_bits`` of Qm.n codes ``q`` (an integer tensor)."""
    frac_bits = _check_frac_bits(frac_bits)
    check_tensor(q, "q of from_fixed")
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise InputError(f"from_fixed: q has dtype {q.dtype}; it takes integer codes such as "
                         "to_fixed(x).qdata (int16 for Q8.8)")
    scale = torch.tensor(2.0 ** -frac_bits)
    qp = QParams(scale=scale, zero_point=torch.zeros((), dtype=torch.int32),
                 qtype=int16, block_size=())  # dequantize reads only scale and zero_point
    return dequantize(q, qp, dtype)


def fake_fixed(x: torch.Tensor, frac_bits: int = 8, qtype: QType = int16) -> torch.Tensor:
    """``from_fixed(to_fixed(x))`` in ``x``'s dtype with a straight-through gradient
    (zero where the value saturated)."""
    check_tensor(x, "input to fake_fixed")
    return fake_quantize(x, fixed_point_qparams(qtype, frac_bits, tuple(x.shape)))
