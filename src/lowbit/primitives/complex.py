"""Complex tensors: the real and the imaginary part are quantized separately.

Each part gets its own :class:`QParams` (per tensor or at any granularity), chosen from that
part alone, so a large imaginary part never coarsens the real grid.  Both parts use the
affine formula of :mod:`lowbit.primitives.affine`; codes come back as a ``(q_real, q_imag)``
pair of integer tensors of the complex tensor's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..types import Granularity, QParams, QType, Scheme
from .affine import choose_qparams, dequantize, fake_quantize, quantize

_PART_DTYPE = {torch.complex64: torch.float32, torch.complex128: torch.float64}


@dataclass(frozen=True)
class ComplexQParams:
    """QParams of the real part and of the imaginary part of one complex tensor."""

    real: QParams
    imag: QParams

    def __post_init__(self):
        for name in ("real", "imag"):
            value = getattr(self, name)
            if not isinstance(value, QParams):
                raise InputError(f"ComplexQParams.{name} is a {type(value).__name__}; "
                                 "it must be a QParams, e.g. from choose_complex_qparams(z, qtype)")

    def to_dict(self) -> dict:
        """Both parts' QParams as plain data."""
        return {"real": self.real.to_dict(), "imag": self.imag.to_dict()}

    @classmethod
    def from_dict(cls, data) -> "ComplexQParams":
        """Inverse of :meth:`to_dict`."""
        return cls(real=QParams.from_dict(data["real"]), imag=QParams.from_dict(data["imag"]))


def _check_complex(z: torch.Tensor, fn: str) -> None:
    if not isinstance(z, torch.Tensor) or not z.is_complex():
        what = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
        raise InputError(f"{fn}: z has dtype {what}; it takes a complex tensor (complex64 or "
                         "complex128) — for a real tensor use choose_qparams/quantize instead")


def _check_cqp(cqp, fn: str) -> None:
    if not isinstance(cqp, ComplexQParams):
        raise InputError(f"{fn}: cqp is a {type(cqp).__name__}; pass the ComplexQParams from "
                         "choose_complex_qparams(z, qtype)")


def choose_complex_qparams(z: torch.Tensor, qtype: QType, scheme: Scheme = Scheme.SYMMETRIC,
                           granularity: Granularity | None = None,
                           frac_bits: int | None = None) -> ComplexQParams:
    """Min/max qparams of ``z.real`` and of ``z.imag``, each from its own range."""
    _check_complex(z, "choose_complex_qparams")
    return ComplexQParams(
        real=choose_qparams(z.real, qtype, scheme, granularity, frac_bits=frac_bits),
        imag=choose_qparams(z.imag, qtype, scheme, granularity, frac_bits=frac_bits))


def quantize_complex(z: torch.Tensor, cqp: ComplexQParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes ``(q_real, q_imag)`` of the two parts of ``z``."""
    _check_complex(z, "quantize_complex")
    _check_cqp(cqp, "quantize_complex")
    return quantize(z.real, cqp.real), quantize(z.imag, cqp.imag)


def dequantize_complex(q_real: torch.Tensor, q_imag: torch.Tensor, cqp: ComplexQParams,
                       dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """The complex tensor ``dequantize(q_real) + 1j * dequantize(q_imag)`` in ``dtype``."""
    for name, q in (("q_real", q_real), ("q_imag", q_imag)):
        if not isinstance(q, torch.Tensor):
            raise InputError(f"dequantize_complex: {name} is a {type(q).__name__}; pass the "
                             "integer codes returned by quantize_complex(z, cqp)")
        if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
            raise InputError(f"dequantize_complex: {name} has dtype {q.dtype}; it takes the "
                             "integer codes returned by quantize_complex(z, cqp)")
    _check_cqp(cqp, "dequantize_complex")
    if q_real.shape != q_imag.shape:
        raise InputError(f"dequantize_complex: q_real has shape {tuple(q_real.shape)} but q_imag "
                         f"has {tuple(q_imag.shape)}; pass both codes of quantize_complex(z)")
    part = _PART_DTYPE.get(dtype)
    if part is None:
        raise InputError(f"dequantize_complex: dtype={dtype} is not complex; use torch.complex64 "
                         "or torch.complex128")
    return torch.complex(dequantize(q_real, cqp.real, part), dequantize(q_imag, cqp.imag, part))


def fake_quantize_complex(z: torch.Tensor, cqp: ComplexQParams) -> torch.Tensor:
    """Quantize-dequantize both parts of ``z`` (same dtype), straight-through gradient."""
    _check_complex(z, "fake_quantize_complex")
    _check_cqp(cqp, "fake_quantize_complex")
    return torch.complex(fake_quantize(z.real, cqp.real), fake_quantize(z.imag, cqp.imag))
