"""Sub-byte packing (primitives/packing.py): exhaustive round trips, and byte-for-byte
agreement with a naive bit-by-bit packer written here."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from lowbit.errors import ConfigError, InputError
from lowbit.primitives.packing import pack, pack_codes, packed_size, unpack, unpack_codes
from lowbit.types import int2, int3, int4, int8, int16, uint2, uint4, uint8

ALL_BITS = [2, 3, 4, 5, 6, 7, 8]


def _naive_pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit by bit: bit ``b`` of code ``i`` is stream bit ``i*bits + b``, stream bit ``t`` is
    bit ``t % 8`` of byte ``t // 8``."""
    rows = codes.reshape(math.prod(codes.shape[:-1]), codes.shape[-1]).tolist()
    n_bytes = math.ceil(codes.shape[-1] * bits / 8)
    out = []
    for row in rows:
        data = [0] * n_bytes
        for i, code in enumerate(row):
            for b in range(bits):
                t = i * bits + b
                data[t // 8] |= ((code >> b) & 1) << (t % 8)
        out.append(data)
    return torch.tensor(out, dtype=torch.uint8).reshape(*codes.shape[:-1], n_bytes)


def _naive_unpack(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`_naive_pack`, bit by bit."""
    rows = packed.reshape(math.prod(packed.shape[:-1]), packed.shape[-1]).tolist()
    out = []
    for data in rows:
        codes = [0] * k
        for i in range(k):
            for b in range(bits):
                t = i * bits + b
                codes[i] |= ((data[t // 8] >> (t % 8)) & 1) << b
        out.append(codes)
    return torch.tensor(out, dtype=torch.uint8).reshape(*packed.shape[:-1], k)


def _group(bits: int) -> int:
    """Codes in the smallest run that fills whole bytes (4 for 2-bit, 8 for 3-bit, 2 for 4-bit)."""
    return math.lcm(8, bits) // bits


def _check(codes: torch.Tensor, bits: int, what: str) -> None:
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8, what
    assert packed.shape == (*codes.shape[:-1], math.ceil(codes.shape[-1] * bits / 8)), what
    assert torch.equal(packed, _naive_pack(codes, bits)), f"{what}: bytes differ from bit-by-bit"
    back = unpack(packed, bits, codes.shape[-1])
    assert back.dtype == torch.uint8, what
    assert torch.equal(back, codes.to(torch.uint8)), f"{what}: round trip changed codes"


@pytest.mark.parametrize("bits", ALL_BITS)
def test_every_value_at_every_slot_of_a_byte_group(bits):
    g = _group(bits)
    values = torch.arange(1 << bits)
    top = (1 << bits) - 1
    for background in (0, top):  # neighbours all zero, then all ones: no bleeding either way
        rows = torch.full((g, 1 << bits, g), background, dtype=torch.int64)
        for slot in range(g):
            rows[slot, :, slot] = values
        _check(rows.reshape(-1, g), bits, f"bits={bits} background={background}")


@pytest.mark.parametrize("bits,n", [(2, 4), (4, 2), (8, 1), (3, 3), (2, 5), (4, 3)])
def test_all_combinations_of_n_consecutive_codes(bits, n):
    combos = torch.tensor(list(itertools.product(range(1 << bits), repeat=n)))  # 2**(bits*n) rows
    for offset in range(_group(bits)):  # the run starts at every slot of a group
        rows = torch.zeros(combos.shape[0], offset + n, dtype=torch.int64)
        rows[:, offset:] = combos
        _check(rows, bits, f"bits={bits} n={n} offset={offset}")


def test_three_bit_every_pair_of_slots_in_a_group():
    # a full 3-bit group has 2**24 states; every pair of its 8 slots, all 64 combinations
    pairs = list(itertools.combinations(range(8), 2))
    combos = torch.tensor(list(itertools.product(range(8), repeat=2)))
    for background in (0, 7):
        rows = torch.full((len(pairs), 64, 8), background, dtype=torch.int64)
        for p, (i, j) in enumerate(pairs):
            rows[p, :, i], rows[p, :, j] = combos[:, 0], combos[:, 1]
        _check(rows.reshape(-1, 8), 3, f"3-bit pairs, background={background}")


@pytest.mark.parametrize("bits", ALL_BITS)
def test_unpack_every_byte_value_at_every_byte_position(bits):
    g = _group(bits)
    n_bytes = g * bits // 8
    rows = torch.zeros(n_bytes, 256, n_bytes, dtype=torch.uint8)
    for j in range(n_bytes):
        rows[j, :, j] = torch.arange(256, dtype=torch.uint8)
    rows = rows.reshape(-1, n_bytes)
    codes = unpack(rows, bits, g)
    assert torch.equal(codes, _naive_unpack(rows, bits, g)), "unpack differs from bit-by-bit"
    assert torch.equal(pack(codes, bits), rows), "a full group is a bijection bytes <-> codes"


@pytest.mark.parametrize("bits", ALL_BITS)
def test_odd_lengths_pad_with_zero_bits_and_keep_batch_dims(bits):
    gen = torch.Generator().manual_seed(bits)
    for k in range(0, 2 * _group(bits) + 2):
        codes = torch.randint(0, 1 << bits, (2, 3, k), generator=gen)
        _check(codes, bits, f"bits={bits} k={k}")
        assert packed_size(k, bits) == math.ceil(k * bits / 8)
        if k * bits % 8:
            last = pack(codes, bits)[..., -1]
            assert bool((last >> (k * bits % 8) == 0).all()), "padding bits must be zero"


def test_documented_layouts():
    assert pack(torch.tensor([1, 2]), 4).tolist() == [0x21], "4-bit: first code in the LOW nibble"
    assert pack(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [1 | 2 << 2 | 3 << 4, 3]
    third = torch.tensor([0, 0, 7, 0, 0, 0, 0, 0])  # code 2 = stream bits 6..8
    assert pack(third, 3).tolist() == [0b11000000, 0b00000001, 0], "3-bit: little-endian stream"
    assert pack(torch.tensor([0, 0, 0, 0, 0, 5, 0, 0]), 3).tolist() == [0, 0b10000000, 0b10]
    assert pack(torch.tensor([5]), 3).tolist() == [5], "one 3-bit code takes one byte"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_dtype_and_layout(dtype):
    torch.manual_seed(0)
    codes = torch.randint(0, 8, (5, 6)).to(dtype)
    expected = _naive_pack(codes.to(torch.int64), 3)
    assert torch.equal(pack(codes, 3), expected), f"{dtype} codes"
    assert torch.equal(pack(codes.t(), 3), _naive_pack(codes.t().contiguous().long(), 3)), \
        "non-contiguous input packs along its last dimension"


@pytest.mark.parametrize("qtype", [int2, int3, int4, int8, uint2, uint4, uint8], ids=str)
def test_pack_codes_round_trips_every_code_of_the_grid(qtype):
    g = _group(qtype.bits)
    values = torch.arange(qtype.qmin, qtype.qmax + 1)
    rows = torch.full((g, values.numel(), g), qtype.qmin, dtype=torch.int64)
    for slot in range(g):
        rows[slot, :, slot] = values
    q = rows.reshape(-1, g).to(qtype.storage_dtype)
    packed = pack_codes(q, qtype)
    assert torch.equal(packed, pack(q.long() - qtype.qmin, qtype.bits)), "shifted by -qmin"
    back = unpack_codes(packed, qtype, g)
    assert back.dtype == qtype.storage_dtype, f"{qtype} codes come back as {qtype.storage_dtype}"
    assert torch.equal(back, q), f"{qtype}: every code survives pack_codes/unpack_codes"


def test_int4_codes_pack_as_offset_nibbles():
    q = torch.tensor([[-8, 7, -1, 0, 3]], dtype=torch.int8)
    packed = pack_codes(q, "int4")
    assert packed.tolist() == [[0 | 15 << 4, 7 | 8 << 4, 11]], "int4 v is stored as v + 8"
    assert unpack_codes(packed, int4, 5).tolist() == q.tolist()


def test_out_of_range_codes_are_rejected():
    with pytest.raises(InputError, match=r"pack: 1 code\(s\) outside \[0, 15\] for bits=4 "
                                         r"\(min 0, max 16\)"):
        pack(torch.tensor([0, 16, 3]), 4)
    with pytest.raises(InputError, match=r"pack: 2 code\(s\) outside \[0, 3\] for bits=2 "
                                         r"\(min -1, max 3\)"):
        pack(torch.tensor([[-1, 3], [-1, 0]]), 2)
    with pytest.raises(InputError, match=r"pack_codes: codes span \[-9, 7\] but int4 holds "
                                         r"\[-8, 7\]"):
        pack_codes(torch.tensor([-9, 7]), int4)
    with pytest.raises(InputError, match=r"pack_codes: codes span \[0, 16\] but uint4 holds"):
        pack_codes(torch.tensor([0, 16]), uint4)


@pytest.mark.parametrize("bad", [1, 9, 16, 4.0, "4", True])
def test_bad_bit_widths_are_rejected(bad):
    match = rf"bits={re.escape(repr(bad))} is invalid: allowed an integer in \[2, 8\]"
    with pytest.raises(ConfigError, match=match):
        pack(torch.tensor([0, 1]), bad)
    with pytest.raises(ConfigError, match=match):
        unpack(torch.tensor([0], dtype=torch.uint8), bad, 1)


def test_bad_tensors_are_rejected():
    with pytest.raises(InputError, match=r"pack: codes has dtype torch.float32; it takes integer"):
        pack(torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(InputError, match=r"pack: codes has dtype torch.bool"):
        pack(torch.tensor([True]), 2)
    with pytest.raises(InputError, match=r"pack: codes is 0-d; codes are packed along the last"):
        pack(torch.tensor(3), 4)
    with pytest.raises(InputError, match=r"pack: codes is a list; pass a torch integer tensor"):
        pack([1, 2], 4)
    with pytest.raises(InputError, match=r"unpack: packed has dtype torch.int64; it takes the u"):
        unpack(torch.tensor([1]), 4, 2)


def test_unpack_length_mismatch_and_bad_k():
    with pytest.raises(InputError, match=r"unpack: the last dimension of packed is 3 bytes but "
                                         r"k=7 codes of 4 bits take 4"):
        unpack(torch.zeros(3, dtype=torch.uint8), 4, 7)
    with pytest.raises(InputError, match=r"last dimension of packed is 2 bytes but k=7 codes of "
                                         r"3 bits take 3"):
        unpack(torch.zeros(2, dtype=torch.uint8), 3, 7)
    with pytest.raises(ConfigError, match=r"k=-1 is invalid: allowed an integer in \[0, "):
        unpack(torch.zeros(0, dtype=torch.uint8), 4, -1)


def test_pack_codes_rejects_wide_or_unknown_grids():
    with pytest.raises(ConfigError, match=r"qtype='int16' is invalid: allowed a grid of 2 to 8"):
        pack_codes(torch.tensor([1]), int16)
    with pytest.raises(ConfigError, match=r"qtype='int16' is invalid"):
        unpack_codes(torch.zeros(2, dtype=torch.uint8), int16, 1)
    with pytest.raises(ConfigError, match=r"qtype=4 is invalid: allowed a lowbit QType"):
        pack_codes(torch.tensor([1]), 4)
