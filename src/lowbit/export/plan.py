"""How one quantized tensor is written in ONNX: storage type, qparams layout, or a fallback.

lowbit holds a weight as codes ``[O, K]`` (its 2-D view) with ``scale``/``zero_point`` of shape
``[O/b0, K/b1]`` for a block ``(b0, b1)``.  ONNX's DequantizeLinear knows three layouts:

``per tensor``  a 0-d scale;
``per axis``    a 1-D scale along ``axis`` (one value per index of that axis);
``blocked``     (opset >= 21) a scale of the tensor's rank holding one value per ``block_size``
                consecutive entries along ``axis`` and one per index elsewhere.

Per-group weights (``PerGroup(g, axis=1)``: block ``(1, g)``) are blocked along axis 1.  A layout
ONNX cannot express (2-D blocks) or a type the opset lacks becomes a *fallback*: a float
initializer holding lowbit's dequantized weight (exact, but no longer integer), with the reason
recorded.  Storage types by grid: at most 4 bits INT4/UINT4 (opset >= 21, else INT8/UINT8, codes
unchanged), at most 8 bits INT8/UINT8, at most 16 bits INT16/UINT16 (opset >= 21).

Activations are QuantizeLinear -> DequantizeLinear only when the grid *is* an ONNX type's full
range (QuantizeLinear saturates to the type): int8/uint8, and int4/uint4/int16/uint16 from
opset 21.  Other grids (int6, or int16 before opset 21) are written as lowbit's own arithmetic
(exact; recorded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..primitives.affine import dequantize
from ..types import QParams, QType
from .ops import (CARRIER_DTYPE, ONNX_INT4, ONNX_INT8, ONNX_INT16, ONNX_TYPE_NAMES, ONNX_UINT4,
                  ONNX_UINT8, ONNX_UINT16)

#: The first opset with INT4/UINT4, INT16/UINT16 Q/DQ and blocked quantization.
OPSET_INT4 = 21


def weight_storage(qtype: QType, opset: int) -> tuple[int | None, str | None]:
    """``(ONNX type for the codes or None, note)``: None means the weight must stay float."""
    signed = qtype.signed
    if qtype.bits <= 4:
        if opset >= OPSET_INT4:
            return (ONNX_INT4 if signed else ONNX_UINT4), None
        wide = ONNX_INT8 if signed else ONNX_UINT8
        return wide, (f"{qtype.name} codes stored as {ONNX_TYPE_NAMES[wide]} "
                      f"(INT4/UINT4 need opset >= {OPSET_INT4}, got {opset})")
    if qtype.bits <= 8:
        return (ONNX_INT8 if signed else ONNX_UINT8), None
    if opset >= OPSET_INT4:
        return (ONNX_INT16 if signed else ONNX_UINT16), None
    return None, (f"{qtype.name} weights need INT16/UINT16 DequantizeLinear (opset >= "
                  f"{OPSET_INT4}, got {opset}); exported as dequantized float weights")


def act_type(qtype: QType, opset: int) -> int | None:
    """The ONNX type whose full range is ``qtype``'s grid, or None (no exact QuantizeLinear)."""
    exact = {(8, True): ONNX_INT8, (8, False): ONNX_UINT8}
    if opset >= OPSET_INT4:
        exact.update({(4, True): ONNX_INT4, (4, False): ONNX_UINT4,
                      (16, True): ONNX_INT16, (16, False): ONNX_UINT16})
    return exact.get((qtype.bits, qtype.signed))


@dataclass
class WeightLayout:
    """A weight ready for DequantizeLinear, or a float fallback (``onnx_type`` None).

    codes: carrier-dtype codes in the ONNX layout (None for a fallback). scale/zero: 0-d, 1-D or
    blocked. axis/block: the DequantizeLinear attributes. float_weight: the fallback weight.
    reshape: the shape to reshape the dequantized weight to (None: keep). describe: one line.
    note: why something is not the plain integer layout (None when it is).
    """

    onnx_type: int | None
    codes: torch.Tensor | None
    scale: torch.Tensor | None
    zero: torch.Tensor | None
    axis: int | None
    block: int | None
    float_weight: torch.Tensor | None
    reshape: tuple[int, ...] | None
    describe: str
    note: str | None = None


def _classify(shape: tuple[int, int], block: tuple[int, int]) -> tuple[str, int | None]:
    """('tensor'|'axis'|'blocked'|'2d-blocks', axis) for a 2-D tensor's block shape."""
    (n0, n1), (b0, b1) = shape, block
    if b0 == n0 and b1 == n1:
        return "tensor", None
    if b0 == 1 and b1 == n1:
        return "axis", 0
    if b1 == 1 and b0 == n0:
        return "axis", 1
    if b0 == 1:
        return "blocked", 1
    if b1 == 1:
        return "blocked", 0
    return "2d-blocks", None


def weight_layout(codes: torch.Tensor, qp: QParams, opset: int, *, transpose: bool = False,
                  shape: tuple[int, ...] | None = None) -> WeightLayout:
    """Lay out codes ``[O, K]`` with ``qp`` (for that view) for ONNX at ``opset``.

    transpose: lay out ``[K, O]`` (a Linear's MatMul operand). shape: the weight's own shape
    (a conv's ``[O, I/g, kh, kw]``): per tensor and per output channel dequantize in that shape;
    other layouts dequantize ``[O, K]`` and reshape after.
    """
    name = qp.qtype.name
    onnx_type, note = weight_storage(qp.qtype, opset)
    scale, zero, block = qp.scale.detach().float(), qp.zero_point.detach(), tuple(qp.block_size)
    if transpose:
        codes, scale, zero, block = codes.t(), scale.t(), zero.t(), block[::-1]
    kind, axis = _classify(tuple(codes.shape), block)
    if kind == "blocked" and opset < OPSET_INT4:
        onnx_type, note = None, (f"{name} weights with per-group scales need blocked "
                                 f"DequantizeLinear (opset >= {OPSET_INT4}, got {opset}); "
                                 "exported as dequantized float weights")
    elif kind == "2d-blocks":
        onnx_type, note = None, (f"{name} weights with 2-D blocks {block} have no ONNX "
                                 "DequantizeLinear layout; exported as dequantized float weights")
    if onnx_type is None:
        w = dequantize(codes, QParams(scale, zero, qp.qtype, block)).contiguous()
        reshape = None if transpose or shape is None else tuple(shape)
        return WeightLayout(None, None, None, None, None, None, w, reshape,
                            f"float weights ({name} dequantized)", note)
    carrier = CARRIER_DTYPE[onnx_type]
    reshape, blk = None, None
    if kind == "tensor":
        scale, zero = scale.reshape(()), zero.reshape(())
    elif kind == "axis":
        scale, zero = scale.reshape(-1), zero.reshape(-1)
    else:
        blk = block[axis]
    if shape is not None and len(shape) != 2:
        if kind == "tensor" or (kind == "axis" and axis == 0):
            codes = codes.reshape(shape)
        else:
            reshape = tuple(shape)
    layout = {"tensor": "per tensor", "axis": f"per axis {axis}",
              "blocked": f"blocked axis {axis} size {blk}"}[kind]
    return WeightLayout(onnx_type, codes.to(carrier).contiguous(), scale.contiguous(),
                        zero.to(carrier).contiguous(), axis, blk, None, reshape,
                        f"DequantizeLinear {ONNX_TYPE_NAMES[onnx_type]} {layout}", note)
