"""lowbit's vocabulary: integer grids, schemes, granularities and quantization parameters.

One formula holds everywhere::

    q  = clamp(round(x / s) + z, qmin, qmax)      (round half to even)
    x̂ = (q - z) * s

``QType`` is the integer grid, ``Scheme`` says how ``s`` and ``z`` are chosen,
``Granularity`` says which elements share one ``(s, z)`` and lowers to a block
shape, and ``QParams`` holds the chosen ``scale``/``zero_point``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .errors import ConfigError, InputError, check_int_range

# ---------------------------------------------------------------------------- QType


@dataclass(frozen=True)
class QType:
    """An integer grid of ``bits`` bits, signed (two's complement) or unsigned."""

    bits: int
    signed: bool = True

    def __post_init__(self) -> None:
        check_int_range("QType.bits", self.bits, 2, 16,
                        fix="lowbit supports 2- to 16-bit grids, e.g. lowbit.int8 or lowbit.uint4")
        if not isinstance(self.signed, bool):
            raise ConfigError("QType.signed", self.signed, "True or False")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    @property
    def storage_dtype(self) -> torch.dtype:
        """Smallest torch integer dtype that holds every code of this grid (unpacked)."""
        if self.bits <= 8:
            return torch.int8 if self.signed else torch.uint8
        if self.bits <= 16 and self.signed:
            return torch.int16
        return torch.int32

    def __repr__(self) -> str:
        return f"lowbit.{self.name}"

    def to_dict(self) -> str:
        return self.name

    @classmethod
    def from_dict(cls, value: Any) -> "QType":
        return qtype_from_name(value)


def qtype_from_name(name: Any) -> QType:
    """Parse ``"int8"``, ``"uint4"``, ... into a :class:`QType` (also accepts a QType)."""
    if isinstance(name, QType):
        return name
    if isinstance(name, str):
        text = name.strip().lower()
        signed = not text.startswith("uint")
        digits = text[4:] if not signed else text[3:] if text.startswith("int") else ""
        if digits.isdigit() and 2 <= int(digits) <= 16:
            return QType(int(digits), signed)
    raise ConfigError("qtype", name, "'int2'..'int16' or 'uint2'..'uint16'",
                      fix="spell the grid as e.g. 'int8', 'int4' or 'uint8'")


int2, int3, int4, int5, int6, int7, int8 = (QType(b, True) for b in range(2, 9))
int9, int10, int11, int12, int13, int14, int15, int16 = (QType(b, True) for b in range(9, 17))
uint2, uint3, uint4, uint5, uint6, uint7, uint8 = (QType(b, False) for b in range(2, 9))
uint9, uint10, uint11, uint12, uint13, uint14, uint15, uint16 = (
    QType(b, False) for b in range(9, 17))

# ---------------------------------------------------------------------------- Scheme


class Scheme(str, enum.Enum):
    """How scale and zero point are chosen.

    SYMMETRIC: zero point 0, ``s = amax / qmax`` (on an unsigned grid: ``[0, amax]``).
    AFFINE: ``s = (max - min) / (qmax - qmin)``, integer zero point.
    FIXED_POINT: ``s = 2**-frac_bits``, zero point 0 (Qm.n; Q8.8 is int16 with frac_bits 8).
    """

    SYMMETRIC = "symmetric"
    AFFINE = "affine"
    FIXED_POINT = "fixed_point"

    @classmethod
    def parse(cls, value: Any) -> "Scheme":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError("scheme", value, "'symmetric', 'affine' or 'fixed_point'",
                              fix="use lowbit.Scheme.SYMMETRIC, AFFINE or FIXED_POINT") from None


# ---------------------------------------------------------------------------- Granularity


class Granularity:
    """Which elements share one (scale, zero_point); lowered to a block shape."""

    kind: str = ""

    def block_size(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Block shape for a tensor of ``shape``: elements of one block share qparams."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @staticmethod
    def from_dict(data: Any) -> "Granularity":
        if isinstance(data, Granularity):
            return data
        if isinstance(data, str):
            data = {"kind": data}
        kind = data.get("kind") if isinstance(data, Mapping) else None
        if not isinstance(kind, str) or kind not in _GRANULARITIES:
            raise ConfigError("granularity", data, f"a dict with kind in {sorted(_GRANULARITIES)}",
                              fix="e.g. {'kind': 'per_channel', 'axis': 0}")
        args = {k: v for k, v in data.items() if k != "kind"}
        try:
            return _GRANULARITIES[kind](**args)
        except TypeError as exc:
            raise ConfigError("granularity", dict(data), "the fields of its kind",
                              fix=str(exc)) from None


def n_blocks(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    """Blocks along each dimension of a tensor of ``shape`` cut into ``block``:
    ``ceil(n / b)``, the shape of its qparams.  When ``b`` does not divide ``n`` the last
    block along that dimension is shorter (``n - (ceil(n / b) - 1)·b`` elements)."""
    return tuple(-(-int(n) // int(b)) if b else int(n) for n, b in zip(shape, block))


def _normalize_axis(axis: int, ndim: int, owner: str) -> int:
    if not -ndim <= axis < ndim:
        raise InputError(f"{owner}: axis={axis} is out of range for a {ndim}-d tensor; "
                         f"use an axis in [{-ndim}, {ndim - 1}]")
    return axis % ndim


@dataclass(frozen=True)
class PerTensor(Granularity):
    """One scale for the whole tensor."""

    kind = "per_tensor"

    def block_size(self, shape):
        return tuple(shape)

    def to_dict(self):
        return {"kind": self.kind}


@dataclass(frozen=True)
class PerChannel(Granularity):
    """One scale per index along ``axis`` (0 = output channels of a Linear/Conv weight)."""

    axis: int = 0
    kind = "per_channel"

    def __post_init__(self):
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise ConfigError("PerChannel.axis", self.axis, "an integer axis", fix="e.g. PerChannel(0)")

    def block_size(self, shape):
        axis = _normalize_axis(self.axis, len(shape), "PerChannel")
        return tuple(1 if i == axis else n for i, n in enumerate(shape))

    def to_dict(self):
        return {"kind": self.kind, "axis": self.axis}


@dataclass(frozen=True)
class PerGroup(Granularity):
    """Groups of ``size`` consecutive elements along ``axis`` share a scale; every
    index of the other axes has its own groups (e.g. per row, per 128 inputs).

    A ``size`` that does not divide the dimension leaves a shorter last group (a *ragged*
    group: 576 inputs at size 128 are four groups of 128 and one of 64); a ``size``
    larger than the dimension is one group of the whole dimension."""

    size: int = 128
    axis: int = -1
    kind = "per_group"

    def __post_init__(self):
        check_int_range("PerGroup.size", self.size, 1, 1 << 30,
                        fix="use a positive group size such as 32, 64 or 128")
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise ConfigError("PerGroup.axis", self.axis, "an integer axis", fix="e.g. PerGroup(128, -1)")

    def block_size(self, shape):
        axis = _normalize_axis(self.axis, len(shape), "PerGroup")
        size = max(1, min(self.size, shape[axis]))
        return tuple(size if i == axis else 1 for i in range(len(shape)))

    def to_dict(self):
        return {"kind": self.kind, "size": self.size, "axis": self.axis}


@dataclass(frozen=True)
class PerToken(Granularity):
    """One scale per row of the last axis (per token of an activation ``[..., K]``)."""

    kind = "per_token"

    def block_size(self, shape):
        if len(shape) == 0:
            return ()
        return tuple(1 for _ in shape[:-1]) + (shape[-1],)

    def to_dict(self):
        return {"kind": self.kind}


_GRANULARITIES = {c.kind: c for c in (PerTensor, PerChannel, PerGroup, PerToken)}

# ---------------------------------------------------------------------------- QParams


@dataclass(frozen=True, eq=False)
class QParams:
    """Quantization parameters of one tensor.

    ``scale`` and ``zero_point`` have the tensor's number of dimensions, with
    size ``ceil(shape[i] / block_size[i])`` along dimension ``i`` (:func:`n_blocks`; they
    broadcast after repeating each entry ``block_size[i]`` times and cutting to ``shape[i]``,
    so a last block that does not fill ``block_size[i]`` is shorter).  ``zero_point`` holds
    integers stored as int32.
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qtype: QType
    block_size: tuple[int, ...]

    def __post_init__(self):
        for name in ("scale", "zero_point"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise ConfigError(f"QParams.{name}", type(value).__name__, "a torch.Tensor",
                                  fix="use choose_qparams/qparams_from_range, or pass "
                                      f"{name}=torch.tensor(...)")
        if not isinstance(self.qtype, QType):
            raise ConfigError("QParams.qtype", self.qtype, "a lowbit QType",
                              fix="pass e.g. lowbit.int8 (qtype_from_name('int8'))")
        if not isinstance(self.block_size, tuple) or not all(
                isinstance(b, int) and not isinstance(b, bool) for b in self.block_size):
            raise ConfigError("QParams.block_size", self.block_size, "a tuple of ints",
                              fix="pass e.g. block_size=(1, 128), or () for per-tensor")
        if self.scale.shape != self.zero_point.shape:
            raise InputError(f"QParams: scale shape {tuple(self.scale.shape)} and zero_point "
                             f"shape {tuple(self.zero_point.shape)} differ; they must match")

    def to_dict(self) -> dict:
        """Metadata plus plain-list tensors (small qparams; checkpoints store tensors apart)."""
        return {"qtype": self.qtype.name, "block_size": list(self.block_size),
                "scale": self.scale.tolist(), "zero_point": self.zero_point.tolist()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QParams):
            return NotImplemented
        return (self.qtype == other.qtype and self.block_size == other.block_size
                and torch.equal(self.scale, other.scale)
                and torch.equal(self.zero_point, other.zero_point))

    __hash__ = None  # holds tensors: not hashable

    @classmethod
    def from_dict(cls, data: Mapping) -> "QParams":
        missing = [k for k in ("scale", "zero_point", "qtype", "block_size")
                   if not isinstance(data, Mapping) or k not in data]
        if missing:
            raise ConfigError("QParams", data if not isinstance(data, Mapping) else sorted(data),
                              "a dict with scale, zero_point, qtype and block_size",
                              fix=f"add the missing key(s) {missing} (QParams.to_dict() writes them)")
        return cls(scale=torch.tensor(data["scale"], dtype=torch.float32),
                   zero_point=torch.tensor(data["zero_point"], dtype=torch.int32),
                   qtype=qtype_from_name(data["qtype"]),
                   block_size=tuple(int(b) for b in data["block_size"]))
