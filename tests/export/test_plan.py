"""lowbit.export.plan: storage types by opset, Q/DQ layouts, and float fallbacks with reasons."""

from __future__ import annotations

import pytest
import torch

from lowbit import PerChannel, PerGroup, PerTensor, QParams, QType, Scheme, int4, int8, int16
from lowbit.export import ops
from lowbit.export.plan import act_type, weight_layout, weight_storage
from lowbit.primitives.affine import choose_qparams, dequantize, quantize


def _weight(shape=(8, 32), seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _dequantized(layout) -> torch.Tensor:
    """What the ONNX DequantizeLinear of ``layout`` computes (or the fallback's floats)."""
    if layout.onnx_type is None:
        w = layout.float_weight
    else:
        w = ops._dequantize_eager(layout.codes, layout.scale, layout.zero, layout.axis,
                                  layout.block)
    return w if layout.reshape is None else w.reshape(layout.reshape)


@pytest.mark.parametrize("qtype,opset,expected,noted", [
    (int4, 21, ops.ONNX_INT4, False), (QType(4, False), 21, ops.ONNX_UINT4, False),
    (int4, 18, ops.ONNX_INT8, True), (QType(3), 21, ops.ONNX_INT4, False),
    (QType(6), 13, ops.ONNX_INT8, False), (QType(8, False), 17, ops.ONNX_UINT8, False),
    (int16, 21, ops.ONNX_INT16, False), (QType(12, False), 23, ops.ONNX_UINT16, False),
    (int16, 20, None, True),
])
def test_weight_storage_by_grid_and_opset(qtype, opset, expected, noted):
    onnx_type, note = weight_storage(qtype, opset)
    assert onnx_type == expected
    assert (note is not None) == noted, "every deviation from the plain layout carries a note"
    if noted:
        assert f"got {opset}" in note and "21" in note, "the note names both opsets"


@pytest.mark.parametrize("qtype,opset,expected", [
    (int8, 13, ops.ONNX_INT8), (QType(8, False), 18, ops.ONNX_UINT8), (int16, 21, ops.ONNX_INT16),
    (int16, 20, None), (int4, 21, ops.ONNX_INT4), (QType(6), 23, None), (QType(12), 21, None)])
def test_act_type_only_when_the_grid_is_a_whole_onnx_type(qtype, opset, expected):
    assert act_type(qtype, opset) == expected


@pytest.mark.parametrize("granularity,transpose,describe", [
    (PerTensor(), False, "INT8 per tensor"),
    (PerChannel(0), False, "INT8 per axis 0"),
    (PerChannel(0), True, "INT8 per axis 1"),
    (PerChannel(1), False, "INT8 per axis 1"),
    (PerGroup(8, axis=1), False, "INT8 blocked axis 1 size 8"),
    (PerGroup(8, axis=1), True, "INT8 blocked axis 0 size 8"),
])
def test_weight_layouts_dequantize_exactly(granularity, transpose, describe):
    w = _weight()
    qp = choose_qparams(w, int8, Scheme.AFFINE, granularity)
    codes = quantize(w, qp)
    layout = weight_layout(codes, qp, 21, transpose=transpose)
    assert layout.describe == f"DequantizeLinear {describe}" and layout.note is None
    expected = dequantize(codes, qp)
    assert torch.equal(_dequantized(layout), expected.t() if transpose else expected)


def test_int4_groups_are_int4_codes_at_21_and_float_weights_before():
    w = _weight()
    qp = choose_qparams(w, int4, Scheme.AFFINE, PerGroup(16, axis=1))
    codes = quantize(w, qp)
    modern = weight_layout(codes, qp, 21)
    assert modern.onnx_type == ops.ONNX_INT4 and modern.block == 16 and modern.axis == 1
    assert modern.codes.dtype == torch.int8 and modern.scale.shape == (8, 2)
    old = weight_layout(codes, qp, 18)
    assert old.onnx_type is None and "opset >= 21, got 18" in old.note
    assert torch.equal(_dequantized(old), dequantize(codes, qp)), "the fallback is lowbit's weight"


def test_two_dimensional_blocks_fall_back_with_a_reason():
    w = _weight((8, 32))
    lo = w.reshape(4, 2, 4, 8).amin(dim=(1, 3))
    hi = w.reshape(4, 2, 4, 8).amax(dim=(1, 3))
    from lowbit.primitives.affine import qparams_from_range
    qp = qparams_from_range(lo, hi, int8, Scheme.AFFINE, (2, 8))
    layout = weight_layout(quantize(w, qp), qp, 23)
    assert layout.onnx_type is None and "2-D blocks (2, 8)" in layout.note


def test_conv_weights_keep_their_shape_per_channel_and_reshape_otherwise():
    w4d = _weight((6, 2, 3, 3))
    w2d = w4d.reshape(6, -1)  # lowbit quantizes conv weights as [O, I/g*kh*kw]
    qp = choose_qparams(w2d, int8, Scheme.SYMMETRIC, PerChannel(0))
    per_channel = weight_layout(quantize(w2d, qp), qp, 21, shape=tuple(w4d.shape))
    assert per_channel.codes.shape == (6, 2, 3, 3) and per_channel.reshape is None
    assert torch.equal(_dequantized(per_channel), dequantize(quantize(w2d, qp), qp).reshape(w4d.shape))
    qg = choose_qparams(w2d, int8, Scheme.SYMMETRIC, PerGroup(9, axis=1))
    grouped = weight_layout(quantize(w2d, qg), qg, 21, shape=tuple(w4d.shape))
    assert grouped.codes.shape == (6, 18) and grouped.reshape == (6, 2, 3, 3)
    assert torch.equal(_dequantized(grouped), dequantize(quantize(w2d, qg), qg).reshape(w4d.shape))


def test_unsigned_sixteen_bit_codes_ride_in_int32_until_cast():
    w = _weight().abs()
    qtype = QType(16, False)
    qp = choose_qparams(w, qtype, Scheme.AFFINE, PerChannel(0))
    codes = quantize(w, qp)
    layout = weight_layout(codes, qp, 21)
    assert layout.onnx_type == ops.ONNX_UINT16 and layout.codes.dtype == torch.int32
    assert int(layout.codes.max()) > 32767, "uint16 codes above int16's range survive"
    assert torch.equal(_dequantized(layout), dequantize(codes, QParams(
        qp.scale, qp.zero_point, qtype, qp.block_size)))
