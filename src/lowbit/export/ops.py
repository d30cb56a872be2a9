"""Export-time tensor ops: ONNX's QuantizeLinear/DequantizeLinear, written once for three runners.

Each op has three faces, picked by the exporter that is running (:func:`exporting`):

``eager``        plain torch that computes what the ONNX node computes (the reference, and what
                 the rewritten model runs outside an export);
``dynamo``       ``torch.onnx.ops.symbolic``: the ONNX node itself, for ``torch.onnx.export(...,
                 dynamo=True)``;
``torchscript``  an ``autograd.Function`` whose ``symbolic`` emits the node, for the older
                 TorchScript exporter (``dynamo=False``).

ONNX's arithmetic (opset 13+, blocked since 21)::

    QuantizeLinear:    q = saturate(round(x / s) + z)          round half to even
    DequantizeLinear:  x̂ = (q - z) · s

``saturate`` clips to the range of the zero point's type (int8, uint8, int16, ...).  lowbit
multiplies by the float32 reciprocal ``x · (1/s)`` instead of dividing; the two agree except
where ``x / s`` lands within one ulp of a rounding tie, so a static activation can differ by one
code there.  Dequantizing stored codes is exact in both.

:func:`fake_quant_arith` (constant qparams) is plain torch that both exporters translate to
Mul, Round, Add, Clip, Sub.  :func:`fake_quant_dynamic` (qparams from each input) is exported as
one marker node, which :func:`lowbit.export.graph.expand_markers` replaces by ReduceMin/ReduceMax,
scale and zero-point arithmetic, Round, Clip and the dequantize arithmetic; tracing one node
instead of fifteen per layer keeps the exporters several times faster.  Both repeat lowbit's own
formulas operation for operation, so ONNX Runtime reproduces them up to float reassociation.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch

from ..primitives.affine import EPS
from ..types import QType, Scheme

#: ONNX TensorProto data types used here (kept local so that importing lowbit never imports onnx).
ONNX_FLOAT, ONNX_UINT8, ONNX_INT8, ONNX_UINT16, ONNX_INT16 = 1, 2, 3, 4, 5
ONNX_UINT4, ONNX_INT4 = 21, 22
ONNX_TYPE_NAMES = {ONNX_FLOAT: "FLOAT", ONNX_UINT8: "UINT8", ONNX_INT8: "INT8",
                   ONNX_UINT16: "UINT16", ONNX_INT16: "INT16", ONNX_UINT4: "UINT4",
                   ONNX_INT4: "INT4"}
#: ``(qmin, qmax)`` of each integer ONNX type: QuantizeLinear saturates to it.
ONNX_TYPE_RANGE = {ONNX_UINT8: (0, 255), ONNX_INT8: (-128, 127), ONNX_UINT16: (0, 65535),
                   ONNX_INT16: (-32768, 32767), ONNX_UINT4: (0, 15), ONNX_INT4: (-8, 7)}
#: torch dtype that carries the codes of each ONNX type before export (a Cast node, folded into
#: the initializer afterwards, turns them into the ONNX type where torch has no such dtype).
CARRIER_DTYPE = {ONNX_UINT8: torch.uint8, ONNX_INT8: torch.int8, ONNX_UINT16: torch.int32,
                 ONNX_INT16: torch.int16, ONNX_UINT4: torch.uint8, ONNX_INT4: torch.int8}
_NATIVE_ONNX = {torch.uint8: ONNX_UINT8, torch.int8: ONNX_INT8, torch.int16: ONNX_INT16}

EXPORTERS = ("eager", "dynamo", "torchscript")
_RUNNER: ContextVar[tuple[str, int]] = ContextVar("lowbit_onnx_runner", default=("eager", 0))


@contextlib.contextmanager
def exporting(exporter: str, opset: int) -> Iterator[None]:
    """Inside this block the ops emit ONNX nodes for ``exporter`` at ``opset``."""
    assert exporter in EXPORTERS, exporter
    token = _RUNNER.set((exporter, int(opset)))
    try:
        yield
    finally:
        _RUNNER.reset(token)


def _runner() -> tuple[str, int]:
    return _RUNNER.get()


# ---------------------------------------------------------------------------- eager references


def _broadcast(p: torch.Tensor, rank: int, axis: int | None, block: int | None,
               size: int | None = None) -> torch.Tensor:
    """A scale or zero point laid out as ONNX says, expanded to broadcast against rank ``rank``
    (blocked: cut to ``size`` entries along ``axis``, the last block being shorter when
    ``block`` does not divide it, as ONNX's ``ceil(D / block_size)`` scales allow)."""
    if p.dim() == 0:
        return p
    if block is None:  # per axis: 1-D along ``axis``
        shape = [1] * rank
        shape[axis] = -1
        return p.reshape(shape)
    p = p.repeat_interleave(block, dim=axis)  # blocked: same rank, ``block`` per entry
    return p if size is None else p.narrow(axis, 0, size)


def _dequantize_eager(q, scale, zero, axis, block):
    rank = q.dim()
    size = None if block is None else q.shape[axis]
    zero = _broadcast(zero.to(torch.int32), rank, axis, block, size)
    return (q.to(torch.int32) - zero).float() * _broadcast(scale.float(), rank, axis, block, size)


def _quantize_eager(x, scale, zero, axis, qmin, qmax):
    rank = x.dim()
    q = torch.round(x / _broadcast(scale.float(), rank, axis, None))
    return (q + _broadcast(zero.float(), rank, axis, None)).clamp(qmin, qmax)


# ---------------------------------------------------------------------------- TorchScript faces


def _axis_attrs(axis: int | None) -> dict:
    return {} if axis is None else {"axis_i": axis}


class _DequantizeTS(torch.autograd.Function):
    """DequantizeLinear for the TorchScript exporter (per tensor or per axis: opset <= 20)."""

    @staticmethod
    def forward(ctx, q, scale, zero, axis):
        return _dequantize_eager(q, scale, zero, axis, None)

    @staticmethod
    def symbolic(g, q, scale, zero, axis):
        return g.op("DequantizeLinear", q, scale, zero, **_axis_attrs(axis))


class _QuantizeDequantizeTS(torch.autograd.Function):
    """QuantizeLinear -> DequantizeLinear for the TorchScript exporter."""

    @staticmethod
    def forward(ctx, x, scale, zero, axis, qmin, qmax):
        q = _quantize_eager(x, scale, zero, axis, qmin, qmax)
        return (q - _broadcast(zero.float(), x.dim(), axis, None)) \
            * _broadcast(scale.float(), x.dim(), axis, None)

    @staticmethod
    def symbolic(g, x, scale, zero, axis, qmin, qmax):
        q = g.op("QuantizeLinear", x, scale, zero, **_axis_attrs(axis))
        return g.op("DequantizeLinear", q, scale, zero, **_axis_attrs(axis))


# ---------------------------------------------------------------------------- the ops


def _symbolic(op: str, inputs, attrs: dict, dtype, shape, opset: int) -> torch.Tensor:
    return torch.onnx.ops.symbolic(op, tuple(inputs), attrs, dtype=dtype, shape=shape,
                                   version=opset)


def _as_onnx_type(t: torch.Tensor, onnx_type: int, opset: int) -> torch.Tensor:
    """``t`` (a carrier dtype) as ``onnx_type``: a Cast node when torch has no such dtype."""
    if _NATIVE_ONNX.get(t.dtype) == onnx_type:
        return t
    return _symbolic("Cast", (t,), {"to": onnx_type}, onnx_type, t.shape, opset)


def dequantize_linear(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *,
                      onnx_type: int, axis: int | None = None,
                      block: int | None = None) -> torch.Tensor:
    """DequantizeLinear ``(q - z)·s`` as float32.

    q: integer codes in :data:`CARRIER_DTYPE` of ``onnx_type``. scale/zero: a 0-d tensor (per
    tensor), 1-D along ``axis`` (per axis), or ``q``'s rank with ``block`` entries of ``q`` per
    entry along ``axis`` (blocked, opset >= 21).
    """
    exporter, opset = _runner()
    if exporter == "dynamo":
        attrs = {}
        if axis is not None:
            attrs["axis"] = int(axis)
        if block is not None:
            attrs["block_size"] = int(block)
        inputs = (_as_onnx_type(q, onnx_type, opset), scale, _as_onnx_type(zero, onnx_type, opset))
        return _symbolic("DequantizeLinear", inputs, attrs, torch.float32, q.shape, opset)
    if exporter == "torchscript":
        assert block is None and _NATIVE_ONNX.get(q.dtype) == onnx_type, \
            "blocked or cast codes reach the TorchScript exporter (opset <= 20)"
        return _DequantizeTS.apply(q, scale, zero, axis)
    return _dequantize_eager(q, scale, zero, axis, block)


def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *,
                        onnx_type: int, axis: int | None = None) -> torch.Tensor:
    """QuantizeLinear -> DequantizeLinear of float32 ``x`` (per tensor, or per ``axis``).

    The grid is the full range of ``onnx_type`` (``zero`` carries it, as in ONNX).
    """
    qmin, qmax = ONNX_TYPE_RANGE[onnx_type]
    exporter, opset = _runner()
    if exporter == "dynamo":
        attrs = {} if axis is None else {"axis": int(axis)}
        zero = _as_onnx_type(zero, onnx_type, opset)
        q = _symbolic("QuantizeLinear", (x, scale, zero), attrs, onnx_type, x.shape, opset)
        return _symbolic("DequantizeLinear", (q, scale, zero), attrs, torch.float32, x.shape,
                         opset)
    if exporter == "torchscript":
        assert _NATIVE_ONNX.get(zero.dtype) == onnx_type, "cast zero point in TorchScript export"
        return _QuantizeDequantizeTS.apply(x, scale, zero, axis, qmin, qmax)
    q = _quantize_eager(x, scale, zero, axis, qmin, qmax)
    rank = x.dim()
    return (q - _broadcast(zero.float(), rank, axis, None)) * _broadcast(scale.float(), rank,
                                                                           axis, None)


def fake_quant_arith(x: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor,
                     zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """lowbit's fake quantization with constant qparams, in elementwise ops (exact):
    ``q = clamp(round(x · (1/s)) + z, qmin, qmax)``, ``x̂ = (q - z)·s``.

    ``inv_scale`` is ``1/s`` computed in float32 beforehand (as lowbit computes it); ``zero``
    is float. All three broadcast against ``x``.
    """
    q = torch.clamp(torch.round(x * inv_scale) + zero, qmin, qmax)
    return (q - zero) * scale


#: the marker node of a dynamic fake quantization; :func:`lowbit.export.graph.expand_markers`
#: replaces it by standard ONNX ops after export (tracing one node instead of fifteen keeps
#: the exporters fast).
MARKER_DOMAIN, DYNAMIC_MARKER = "lowbit", "DynamicFakeQuant"


def dynamic_attrs(qtype: QType, scheme: Scheme, per_token: bool) -> dict[str, int]:
    """The marker's attributes: the grid, the scheme and the reduction."""
    return {"qmin": qtype.qmin, "qmax": qtype.qmax,
            "symmetric": int(scheme is Scheme.SYMMETRIC), "signed": int(qtype.signed),
            "per_token": int(per_token)}


class _DynamicTS(torch.autograd.Function):
    """The dynamic fake-quant marker for the TorchScript exporter."""

    @staticmethod
    def forward(ctx, x, qtype, scheme, per_token):
        return _dynamic_eager(x, qtype, scheme, per_token)

    @staticmethod
    def symbolic(g, x, qtype, scheme, per_token):
        attrs = {f"{k}_i": v for k, v in dynamic_attrs(qtype, scheme, per_token).items()}
        return g.op(f"{MARKER_DOMAIN}::{DYNAMIC_MARKER}", x, **attrs).setType(x.type())


def dynamic_qparams(x: torch.Tensor, qtype: QType, scheme: Scheme,
                    per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` of ``x`` as ``choose_qparams`` computes them, operation for operation.

    per_token: one pair per row of the last axis (min/max over it, kept); otherwise one pair
    for the whole tensor. ``zero`` is float (integer valued).
    """
    if per_token:
        lo = torch.amin(x, dim=-1, keepdim=True)  # (..., 1)
        hi = torch.amax(x, dim=-1, keepdim=True)  # (..., 1)
    else:
        lo, hi = torch.amin(x), torch.amax(x)  # 0-d
    if scheme is Scheme.SYMMETRIC:
        amax = torch.maximum(-lo, hi) if qtype.signed else torch.clamp(hi, min=0.0)
        scale = torch.clamp(amax / float(qtype.qmax), min=EPS)
        return scale, torch.zeros_like(scale)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / float(qtype.qmax - qtype.qmin), min=EPS)
    zero = torch.clamp(float(qtype.qmin) - torch.round(lo / scale), qtype.qmin, qtype.qmax)
    return scale, zero


def _dynamic_eager(x, qtype, scheme, per_token):
    scale, zero = dynamic_qparams(x, qtype, scheme, per_token)
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zero, qtype.qmin, qtype.qmax)
    return (q - zero) * scale


def fake_quant_dynamic(x: torch.Tensor, qtype: QType, scheme: Scheme,
                       per_token: bool) -> torch.Tensor:
    """Fake quantization of float32 ``x`` with qparams chosen from ``x`` itself at run time.

    Exported as a marker node that is expanded into ReduceMin/ReduceMax, scale and zero-point
    arithmetic, Round, Clip and the dequantize arithmetic after export.
    """
    exporter, _ = _runner()
    if exporter == "dynamo":
        return _symbolic(f"{MARKER_DOMAIN}::{DYNAMIC_MARKER}", (x,),
                         dynamic_attrs(qtype, scheme, per_token), torch.float32, x.shape, 1)
    if exporter == "torchscript":
        return _DynamicTS.apply(x, qtype, scheme, per_token)
    return _dynamic_eager(x, qtype, scheme, per_token)
