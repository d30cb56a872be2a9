"""The vocabulary: QType grids, Scheme, Granularity block shapes, QParams."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import lowbit
from lowbit import types
from lowbit.errors import ConfigError, InputError
from lowbit.types import (Granularity, PerChannel, PerGroup, PerTensor, PerToken, QParams, QType,
                          Scheme, n_blocks, qtype_from_name)

ALL_BITS = range(2, 17)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_every_signed_grid(bits):
    q = getattr(types, f"int{bits}")
    assert (q.bits, q.signed, q.name) == (bits, True, f"int{bits}")
    assert q.qmin == -(2 ** (bits - 1)) and q.qmax == 2 ** (bits - 1) - 1
    assert q.qmax - q.qmin + 1 == 2 ** bits, "two's complement has 2**bits codes"
    assert q.storage_dtype == (torch.int8 if bits <= 8 else torch.int16)
    info = torch.iinfo(q.storage_dtype)
    assert info.min <= q.qmin and q.qmax <= info.max, "storage holds every code"
    assert getattr(lowbit, q.name) is q, f"lowbit.{q.name} is exported"
    assert repr(q) == f"lowbit.int{bits}"


@pytest.mark.parametrize("bits", ALL_BITS)
def test_every_unsigned_grid(bits):
    q = getattr(types, f"uint{bits}")
    assert (q.bits, q.signed, q.name) == (bits, False, f"uint{bits}")
    assert q.qmin == 0 and q.qmax == 2 ** bits - 1
    assert q.storage_dtype == (torch.uint8 if bits <= 8 else torch.int32)
    info = torch.iinfo(q.storage_dtype)
    assert info.min <= q.qmin and q.qmax <= info.max, "storage holds every code"
    assert getattr(lowbit, q.name) is q


def test_qtypes_are_frozen_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        types.int8.bits = 4
    assert QType(8) == types.int8 and hash(QType(8)) == hash(types.int8)
    assert QType(8, False) != types.int8


@pytest.mark.parametrize("bits", [1, 17, 0, -8, 8.0, True, "8", None])
def test_bad_bits_raise(bits):
    with pytest.raises(ConfigError, match=r"QType.bits=.* is invalid: allowed an integer in "
                                          r"\[2, 16\]\. Fix: lowbit supports 2- to 16-bit"):
        QType(bits)


@pytest.mark.parametrize("signed", [1, "yes", None])
def test_bad_signed_raises(signed):
    with pytest.raises(ConfigError, match=r"QType.signed=.* is invalid: allowed True or False"):
        QType(8, signed)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("signed", [True, False])
def test_qtype_name_round_trip(bits, signed):
    q = QType(bits, signed)
    assert qtype_from_name(q.name) == q
    assert QType.from_dict(json.loads(json.dumps(q.to_dict()))) == q
    assert qtype_from_name(q) is q
    assert qtype_from_name(f"  {q.name.upper()} ") == q, "case and spaces are forgiven"


@pytest.mark.parametrize("bad", ["int1", "int17", "uint0", "int", "float8", "i8", "int-8",
                                 "", 8, None, ["int8"]])
def test_bad_qtype_names_raise(bad):
    with pytest.raises(ConfigError, match=r"qtype=.* is invalid: allowed 'int2'..'int16' or "
                                          r"'uint2'..'uint16'\. Fix: spell the grid"):
        qtype_from_name(bad)


def test_scheme_parse():
    for scheme in Scheme:
        assert Scheme.parse(scheme) is scheme
        assert Scheme.parse(scheme.value) is scheme
        assert Scheme.parse(scheme.value.upper()) is scheme
    assert Scheme("affine") is Scheme.AFFINE and Scheme.AFFINE == "affine", "a string enum"
    for bad in ("asymmetric", "", None, 3):
        with pytest.raises(ConfigError, match=r"scheme=.* is invalid: allowed 'symmetric', "
                                              r"'affine' or 'fixed_point'"):
            Scheme.parse(bad)


# -------------------------------------------------------------------------- Granularity


@pytest.mark.parametrize("gran,shape,block", [
    (PerTensor(), (4, 6), (4, 6)),
    (PerTensor(), (), ()),
    (PerTensor(), (2, 3, 5), (2, 3, 5)),
    (PerChannel(0), (4, 6), (1, 6)),
    (PerChannel(1), (4, 6), (4, 1)),
    (PerChannel(-1), (4, 6), (4, 1)),
    (PerChannel(-2), (4, 6), (1, 6)),
    (PerChannel(0), (8, 3, 3, 3), (1, 3, 3, 3)),
    (PerChannel(1), (2, 8, 5), (2, 1, 5)),
    (PerChannel(0), (7,), (1,)),
    (PerGroup(2, -1), (4, 6), (1, 2)),
    (PerGroup(3, 1), (4, 6), (1, 3)),
    (PerGroup(2, 0), (4, 6), (2, 1)),
    (PerGroup(2, -2), (4, 6), (2, 1)),
    (PerGroup(6), (4, 6), (1, 6)),
    (PerGroup(4, -1), (2, 3, 8), (1, 1, 4)),
    (PerToken(), (4, 6), (1, 6)),
    (PerToken(), (2, 3, 5), (1, 1, 5)),
    (PerToken(), (5,), (5,)),
    (PerToken(), (), ()),
])
def test_block_size(gran, shape, block):
    assert gran.block_size(shape) == block
    n_blocks = 1
    for n, b in zip(shape, block):
        assert n % b == 0, "a block tiles its dimension"
        n_blocks *= n // b
    if isinstance(gran, PerChannel):
        assert n_blocks == shape[gran.axis], "one block per channel"


def test_per_group_default_is_128_along_the_last_axis():
    assert PerGroup() == PerGroup(128, -1)
    assert PerGroup().block_size((2, 256)) == (1, 128)


@pytest.mark.parametrize("gran,shape,match", [
    (PerChannel(2), (3, 6), r"PerChannel: axis=2 is out of range for a 2-d tensor; use an axis "
                            r"in \[-2, 1\]"),
    (PerChannel(-3), (3, 6), r"axis=-3 is out of range"),
    (PerChannel(0), (), r"axis=0 is out of range for a 0-d tensor"),
    (PerGroup(2, 3), (4, 6), r"PerGroup: axis=3 is out of range"),
])
def test_block_size_errors(gran, shape, match):
    with pytest.raises(InputError, match=match):
        gran.block_size(shape)


@pytest.mark.parametrize("kwargs,match", [
    ({"size": 0}, r"PerGroup.size=0 is invalid: allowed an integer in \[1, "),
    ({"size": 64.0}, r"PerGroup.size=64.0 is invalid"),
    ({"size": True}, r"PerGroup.size=True is invalid"),
    ({"axis": "last"}, r"PerGroup.axis='last' is invalid: allowed an integer axis"),
])
def test_bad_per_group_fields_raise(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PerGroup(**kwargs)


@pytest.mark.parametrize("axis", [None, 1.0, False, "0"])
def test_bad_per_channel_axis_raises(axis):
    with pytest.raises(ConfigError,
                       match=r"PerChannel.axis=.* is invalid: allowed an integer axis"):
        PerChannel(axis)


@pytest.mark.parametrize("gran", [PerTensor(), PerChannel(0), PerChannel(-1), PerGroup(32, 0),
                                  PerGroup(), PerToken()])
def test_granularity_dict_round_trip(gran):
    data = json.loads(json.dumps(gran.to_dict()))
    assert Granularity.from_dict(data) == gran
    assert type(Granularity.from_dict(data)) is type(gran)
    assert Granularity.from_dict(gran) is gran


def test_granularity_from_a_bare_kind_string():
    assert Granularity.from_dict("per_tensor") == PerTensor()
    assert Granularity.from_dict("per_channel") == PerChannel(0)
    assert Granularity.from_dict("per_token") == PerToken()


def test_granularities_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PerChannel(0).axis = 1


@pytest.mark.parametrize("bad,match", [
    ({"kind": "per_row"}, r"granularity=\{'kind': 'per_row'\} is invalid: allowed a dict with "
                          r"kind in \['per_channel', 'per_group', 'per_tensor', 'per_token'\]"),
    ("per_block", r"granularity=\{'kind': 'per_block'\} is invalid"),
    ({"axis": 0}, r"granularity=\{'axis': 0\} is invalid"),
    (3, r"granularity=3 is invalid.*Fix: e.g. \{'kind': 'per_channel', 'axis': 0\}"),
    (None, r"granularity=None is invalid"),
    ({"kind": "per_channel", "size": 3}, r"granularity=\{'kind': 'per_channel', 'size': 3\} is "
                                         r"invalid: allowed the fields of its kind\. Fix: .*size"),
    ({"kind": "per_tensor", "axis": 0}, r"allowed the fields of its kind"),
])
def test_bad_granularity_dicts_raise(bad, match):
    with pytest.raises(ConfigError, match=match):
        Granularity.from_dict(bad)


def test_bad_granularity_field_values_raise_through_from_dict():
    with pytest.raises(ConfigError, match=r"PerGroup.size=-1 is invalid"):
        Granularity.from_dict({"kind": "per_group", "size": -1})


# ------------------------------------------------------------------------------ QParams


def _qparams(shape=(4, 1), block=(1, 8), qtype=types.int4):
    g = torch.Generator().manual_seed(0)
    return QParams(scale=torch.rand(shape, generator=g) + 0.01,
                   zero_point=torch.randint(-3, 3, shape, generator=g, dtype=torch.int32),
                   qtype=qtype, block_size=block)


@pytest.mark.parametrize("shape,block,qtype", [((4, 1), (1, 8), types.int4),
                                               ((1, 1), (4, 8), types.uint8),
                                               ((2, 3), (2, 4), types.int16),
                                               ((), (), types.int8)])
def test_qparams_dict_round_trip(shape, block, qtype):
    qp = _qparams(shape, block, qtype)
    back = QParams.from_dict(json.loads(json.dumps(qp.to_dict())))
    assert torch.equal(back.scale, qp.scale), "float32 survives a trip through JSON exactly"
    assert back.scale.dtype == torch.float32
    assert torch.equal(back.zero_point, qp.zero_point) and back.zero_point.dtype == torch.int32
    assert back.qtype == qtype and back.block_size == block


def test_qparams_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _qparams().qtype = types.int8


def test_qparams_shape_mismatch_raises():
    with pytest.raises(InputError, match=r"QParams: scale shape \(4, 1\) and zero_point shape "
                                         r"\(4,\) differ; they must match"):
        QParams(torch.ones(4, 1), torch.zeros(4, dtype=torch.int32), types.int8, (1, 8))
    data = _qparams().to_dict()
    data["zero_point"] = [0, 0]
    with pytest.raises(InputError, match="differ; they must match"):
        QParams.from_dict(data)


def test_qparams_from_dict_rejects_a_bad_qtype():
    data = dict(_qparams().to_dict(), qtype="int32")
    with pytest.raises(ConfigError, match=r"qtype='int32' is invalid"):
        QParams.from_dict(data)


@pytest.mark.parametrize("gran,shape,block,blocks", [
    (PerGroup(4, -1), (3, 6), (1, 4), (3, 2)),      # 4 + 2: a ragged last group
    (PerGroup(128), (2, 576), (1, 128), (2, 5)),    # SmolLM2's width: 4 × 128 + 64
    (PerGroup(128), (1, 100), (1, 100), (1, 1)),    # larger than the dimension: one group
    (PerGroup(3, 0), (7, 2), (3, 1), (3, 2)),
])
def test_per_group_that_does_not_divide_leaves_a_shorter_last_group(gran, shape, block, blocks):
    assert gran.block_size(shape) == block
    assert n_blocks(shape, block) == blocks
    last = [n - (m - 1) * b for n, b, m in zip(shape, block, blocks)]
    assert all(0 < n <= b for n, b in zip(last, block)), "the last block is non-empty, <= block"
