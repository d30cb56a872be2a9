"""Sub-byte packing: unsigned ``bits``-bit codes along the last dimension into uint8 bytes.

The codes form one little-endian bit stream: code ``i`` occupies stream bits
``[i * bits, (i + 1) * bits)`` (its least significant bit first), and byte ``j`` holds
stream bits ``[8 * j, 8 * j + 8)``, bit 0 being the byte's least significant bit.  So

* 4-bit: 2 codes a byte, the first code in the LOW nibble;
* 2-bit: 4 codes a byte, the first code in bits 0-1;
* 3-bit: 8 codes in 3 bytes (code 2 straddles bytes 0 and 1, code 5 bytes 1 and 2).

A row of ``K`` codes packs into ``ceil(K * bits / 8)`` bytes, the unused high bits of the
last byte being zero; :func:`unpack` needs ``K`` back to drop them.  Any width from 2 to 8
bits works the same way: ``g = lcm(8, bits) / bits`` codes make one group of
``lcm(8, bits) / 8`` bytes, assembled as one int64 word with shifts, all vectorized.

:func:`pack_codes` / :func:`unpack_codes` pack the signed or unsigned codes of a
:class:`QType` by shifting them by ``-qmin`` first (int4 ``-8..7`` is stored as ``0..15``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError, InputError, check_int_range
from ..types import QType, qtype_from_name

PACK_BITS = (2, 3, 4, 5, 6, 7, 8)


def _check_bits(bits: Any) -> int:
    check_int_range("bits", bits, PACK_BITS[0], PACK_BITS[-1],
                    fix="pack 2- to 8-bit codes, e.g. bits=4 for int4/uint4 weights")
    return bits


def _group(bits: int) -> tuple[int, int]:
    """(codes, bytes) of the smallest run of codes that fills whole bytes."""
    stream = math.lcm(8, bits)
    return stream // bits, stream // 8


def packed_size(k: int, bits: int) -> int:
    """Bytes that ``k`` codes of ``bits`` bits take: ``ceil(k * bits / 8)``."""
    return -(-k * _check_bits(bits) // 8)


def _check_integer(t: Any, fn: str, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{fn}: {name} is a {type(t).__name__}; pass a torch integer tensor")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"{fn}: {name} has dtype {t.dtype}; it takes integer codes "
                         "(e.g. quantize(x, qp) or a uint8 tensor)")
    if t.dim() == 0:
        raise InputError(f"{fn}: {name} is 0-d; codes are packed along the last dimension, "
                         "so give it at least one dimension (e.g. codes.reshape(1))")


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes ``(..., K)`` in ``[0, 2**bits)`` into uint8 ``(..., ceil(K*bits/8))``."""
    bits = _check_bits(bits)
    _check_integer(codes, "pack", "codes")
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= 1 << bits:
            n_bad = int(((codes < 0) | (codes >= 1 << bits)).sum())
            raise InputError(f"pack: {n_bad} code(s) outside [0, {(1 << bits) - 1}] for "
                             f"bits={bits} (min {lo}, max {hi}); signed codes go through "
                             "pack_codes(q, qtype), or raise bits")
    *batch, k = codes.shape
    per_group, group_bytes = _group(bits)
    n_groups = -(-k // per_group)
    words = torch.zeros(*batch, n_groups * per_group, dtype=torch.int64, device=codes.device)
    words[..., :k] = codes
    words = words.reshape(*batch, n_groups, per_group)  # (..., G, g)
    shifts = torch.arange(per_group, device=codes.device) * bits
    words = (words << shifts).sum(dim=-1, keepdim=True)  # (..., G, 1): disjoint bits, sum == or
    byte_shifts = torch.arange(group_bytes, device=codes.device) * 8
    packed = (words >> byte_shifts) & 0xFF  # (..., G, group_bytes)
    packed = packed.reshape(*batch, n_groups * group_bytes)
    return packed[..., :packed_size(k, bits)].to(torch.uint8).contiguous()


def unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Codes ``(..., k)`` as uint8 from bytes ``(..., ceil(k*bits/8))`` made by :func:`pack`."""
    bits = _check_bits(bits)
    check_int_range("k", k, 0, 1 << 62, fix="pass the number of codes per row given to pack")
    _check_integer(packed, "unpack", "packed")
    if packed.dtype != torch.uint8:
        raise InputError(f"unpack: packed has dtype {packed.dtype}; it takes the uint8 bytes "
                         "returned by pack")
    n_bytes = packed_size(k, bits)
    if packed.shape[-1] != n_bytes:
        raise InputError(f"unpack: the last dimension of packed is {packed.shape[-1]} bytes but "
                         f"k={k} codes of {bits} bits take {n_bytes}; pass the k and bits "
                         "that were given to pack")
    *batch, _ = packed.shape
    per_group, group_bytes = _group(bits)
    n_groups = -(-k // per_group)
    words = torch.zeros(*batch, n_groups * group_bytes, dtype=torch.int64, device=packed.device)
    words[..., :n_bytes] = packed
    words = words.reshape(*batch, n_groups, group_bytes)  # (..., G, bytes)
    byte_shifts = torch.arange(group_bytes, device=packed.device) * 8
    words = (words << byte_shifts).sum(dim=-1, keepdim=True)  # (..., G, 1)
    shifts = torch.arange(per_group, device=packed.device) * bits
    codes = (words >> shifts) & ((1 << bits) - 1)  # (..., G, g)
    return codes.reshape(*batch, n_groups * per_group)[..., :k].to(torch.uint8)


def _packable(qtype: Any) -> QType:
    if not isinstance(qtype, (QType, str)):
        raise ConfigError("qtype", qtype, "a lowbit QType or its name", fix="e.g. lowbit.int4")
    qtype = qtype_from_name(qtype)
    if qtype.bits > PACK_BITS[-1]:
        raise ConfigError("qtype", qtype.name, "a grid of 2 to 8 bits for packing",
                          fix=f"store {qtype.name} codes unpacked in {qtype.storage_dtype}")
    return qtype


def pack_codes(q: torch.Tensor, qtype: QType) -> torch.Tensor:
    """Pack the codes of ``qtype`` (signed or not) along the last dimension into uint8.

    Codes are shifted by ``-qmin`` into ``[0, 2**bits)`` first, so int4 ``-8..7`` packs
    as ``0..15``.  Inverse: :func:`unpack_codes`.
    """
    qtype = _packable(qtype)
    _check_integer(q, "pack_codes", "q")
    if q.numel():
        lo, hi = int(q.min()), int(q.max())
        if lo < qtype.qmin or hi > qtype.qmax:
            raise InputError(f"pack_codes: codes span [{lo}, {hi}] but {qtype.name} holds "
                             f"[{qtype.qmin}, {qtype.qmax}]; pass codes quantized to {qtype.name}")
    return pack(q.to(torch.int16) - qtype.qmin, qtype.bits)


def unpack_codes(packed: torch.Tensor, qtype: QType, k: int) -> torch.Tensor:
    """Codes of ``qtype`` ``(..., k)`` in ``qtype.storage_dtype`` (int8 for int4) from
    :func:`pack_codes` bytes."""
    qtype = _packable(qtype)
    codes = unpack(packed, qtype.bits, k).to(torch.int16) + qtype.qmin
    return codes.to(qtype.storage_dtype)
