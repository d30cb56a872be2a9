"""``QuantWeight``: one quantized weight matrix as the kernels receive it.

The real modules of ``lowbit.nn`` store a weight in its 2-D view ``[N, K]`` (``N`` outputs,
``K`` inputs; a conv weight ``[O, I/groups, kh, kw]`` is ``[O, I/groups·kh·kw]``):

``qdata``       integer codes ``[N, K]`` in ``qtype.storage_dtype``, or for grids of at most 4
                bits the codes packed along ``K`` into uint8 ``[N, ceil(K·bits/8)]``
                (:func:`lowbit.primitives.packing.pack_codes`: offset by ``-qmin``, first code
                in the low bits);
``scale``, ``zero_point``  shaped like :class:`lowbit.types.QParams` for ``[N, K]``
                (``[ceil(N / block[0]), ceil(K / block[1])]``: a last group shorter than
                ``block[1]`` when it does not divide ``K``), integer zero points;

and ``x̂ = (q − z)·s``.  ``K`` is the unpacked codes' width; for packed codes it is
given (``k=``), or else taken as ``scale.shape[1]·block[1]``, which is right whenever
``block[1]`` divides ``K``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError, InputError
from ..primitives.affine import dequantize
from ..primitives.packing import packed_size, unpack_codes
from ..types import QParams, QType, n_blocks, qtype_from_name


@dataclass(frozen=True, eq=False)
class QuantWeight:
    """A validated quantized weight ``[N, K]`` (see the module docstring for the layout).

    Build it with :func:`quant_weight`, which checks shapes and dtypes. The tensors are
    the caller's own (not copied).
    """

    qdata: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    qtype: QType
    block_size: tuple[int, int]
    n: int
    k: int
    packed: bool
    symmetric: bool

    @property
    def device(self) -> torch.device:
        """The device the codes live on."""
        return self.qdata.device

    @property
    def per_channel(self) -> bool:
        """One (scale, zero) per output row: block ``(1, K)``."""
        return self.block_size == (1, self.k)

    def qparams(self) -> QParams:
        """The weight's :class:`QParams` for the ``[N, K]`` view."""
        return QParams(self.scale, self.zero_point, self.qtype, self.block_size)

    def codes(self) -> torch.Tensor:
        """Unpacked codes ``[N, K]`` in ``qtype.storage_dtype`` (no copy when not packed)."""
        if self.packed:
            return unpack_codes(self.qdata, self.qtype, self.k)
        return self.qdata

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``(q − z)·s`` ``[N, K]`` in ``dtype``."""
        return dequantize(self.codes(), self.qparams(), dtype)

    def stored_nbytes(self) -> int:
        """Bytes of ``qdata``, ``scale`` and ``zero_point`` as stored."""
        return sum(t.numel() * t.element_size() for t in (self.qdata, self.scale, self.zero_point))

    def rows(self, start: int, stop: int) -> "QuantWeight":
        """Output rows ``[start, stop)`` as a weight of their own (views, no copy)."""
        b0 = self.block_size[0]
        if start % b0 or (stop % b0 and stop != self.n):
            raise InputError(f"QuantWeight.rows: rows [{start}, {stop}) cut a block of "
                             f"{b0} rows; split at multiples of block_size[0]={b0}")
        end = -(-stop // b0)  # a ragged last row block is taken whole
        return QuantWeight(self.qdata[start:stop], self.scale[start // b0:end],
                           self.zero_point[start // b0:end], self.qtype,
                           self.block_size, stop - start, self.k, self.packed,
                           self.symmetric)


def quant_weight(qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 qtype, block_size, symmetric: bool | None = None,
                 k: int | None = None) -> QuantWeight:
    """Check and describe a quantized weight ``[N, K]`` stored as lowbit.nn stores it.

    symmetric: whether the weight's scheme has zero points fixed at 0 (a layer passes what
    its spec says); None reads it from the zero points (for raw tensors).
    k: the number of inputs ``K`` (needed for packed codes whose last group is ragged,
    i.e. ``block_size[1]`` does not divide ``K``; None derives it from the tensors).
    Raises :class:`InputError` naming the inconsistent tensor and the fix.
    """
    qtype = qtype_from_name(qtype)
    for name, t in (("qdata", qdata), ("scale", scale), ("zero_point", zero_point)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} is a {type(t).__name__}; pass a torch tensor")
        if t.dim() != 2:
            raise InputError(f"{name} has shape {tuple(t.shape)}; kernels take the weight's "
                             "2-D view [N, K] (a conv weight as [O, I/groups·kh·kw]) and "
                             "qparams of the same rank")
    if not isinstance(block_size, (tuple, list)) or len(block_size) != 2 or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block_size):
        raise ConfigError("block_size", block_size, "two positive ints (rows, cols)",
                          fix="pass QParams.block_size of the [N, K] view, e.g. (1, K) per "
                              "channel or (1, 128) for groups of 128")
    block = (int(block_size[0]), int(block_size[1]))
    if scale.shape != zero_point.shape:
        raise InputError(f"scale shape {tuple(scale.shape)} and zero_point shape "
                         f"{tuple(zero_point.shape)} differ; they must match")
    if scale.is_complex() or not scale.is_floating_point():
        raise InputError(f"scale has dtype {scale.dtype}; pass float scales")
    if zero_point.is_floating_point() or zero_point.is_complex():
        raise InputError(f"zero_point has dtype {zero_point.dtype}; kernels take integer "
                         "zero points (int32)")
    n = qdata.shape[0]
    if block[0] > n or n_blocks((n,), (block[0],))[0] != scale.shape[0]:
        raise InputError(f"qdata has {n} rows but scale {tuple(scale.shape)} with block_size "
                         f"{block} describes {scale.shape[0] * block[0]} (blocks of "
                         f"{block[0]} rows, the last may be shorter); pass matching tensors")
    full = scale.shape[1] * block[1]
    if k is None:  # unpacked: the codes' width; packed: whole blocks unless told otherwise
        packs = qtype.bits <= 4 and qdata.dtype == torch.uint8
        k = full if packs and qdata.shape[1] == packed_size(full, qtype.bits) else qdata.shape[1]
        if block[1] > k or n_blocks((k,), (block[1],))[0] != scale.shape[1]:
            raise InputError(f"qdata has shape {tuple(qdata.shape)} but scale and block_size "
                             f"describe [{n}, {full}] (or a shorter last group of at least "
                             f"{full - block[1] + 1} columns; codes unpacked, or packed uint8 "
                             "for grids of at most 4 bits); pass matching tensors, and k= for "
                             "packed codes whose last group is short")
    k = int(k)
    if k < block[1] or n_blocks((k,), (block[1],))[0] != scale.shape[1]:
        raise InputError(f"K={k} inputs in groups of {block[1]} make "
                         f"{n_blocks((max(k, 1),), (block[1],))[0]} groups, but scale has "
                         f"{scale.shape[1]} columns; pass k= (the weight's input count) and "
                         "qparams chosen for it")
    # lowbit.nn packs grids of at most 4 bits; a packed row of K codes takes ceil(K·bits/8)
    packed = (qtype.bits <= 4 and qdata.dtype == torch.uint8
              and qdata.shape[1] == packed_size(k, qtype.bits))
    if not packed:
        if qdata.shape[1] != k:
            raise InputError(f"qdata has shape {tuple(qdata.shape)} but scale and block_size "
                             f"describe [{n}, {k}] (codes unpacked, or packed uint8 "
                             f"[{n}, {packed_size(k, qtype.bits) if qtype.bits <= 8 else k}] for "
                             "grids of at most 4 bits); pass matching tensors")
        if qdata.dtype != qtype.storage_dtype:
            raise InputError(f"qdata has dtype {qdata.dtype}; unpacked {qtype.name} codes are "
                             f"stored as {qtype.storage_dtype}")
    if len({qdata.device, scale.device, zero_point.device}) != 1:
        raise InputError(f"qdata ({qdata.device}), scale ({scale.device}) and zero_point "
                         f"({zero_point.device}) are on different devices; move them together")
    if symmetric is None:
        symmetric = not bool(zero_point.any())
    return QuantWeight(qdata, scale, zero_point, qtype, block, n, k, packed, bool(symmetric))
