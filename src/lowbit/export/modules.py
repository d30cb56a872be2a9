"""Export-time rewrite: each lowbit module becomes a plain module whose forward exports to Q/DQ.

:func:`rewrite` walks a (deep-copied) model and replaces every lowbit module by the entry of
:data:`REWRITES` for its exact type: fake-quant (QAT) and converted modules alike become

``ExportLinear``     [act Q/DQ] -> MatMul with DequantizeLinear(weight ``[K, O]``) -> + bias
``ExportConv``       [act Q/DQ] -> Conv with DequantizeLinear(weight) (lowbit's conv geometry)
``ExportEmbedding``  Gather from DequantizeLinear(table)
``ExportAct``        a standalone ``TensorQuantizer``: its fake quantization

Weights are stored as integer codes (lowbit's own codes, so dequantization is exact).  Static
activations are QuantizeLinear -> DequantizeLinear; dynamic ones compute their qparams in the
graph (:func:`~lowbit.export.ops.fake_quant_dynamic`).  Every rewrite returns a
:class:`LayerRecord` saying how the layer was written and why anything fell back.  A lowbit
module whose type has no entry raises :class:`ExportError` naming it; add an entry with
:func:`register_rewrite`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LayerConfig
from ..errors import ExportError, StateError
from ..nn.qat import (QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear, QuantModuleMixin,
                      weight_matrix)
from ..nn.quantized import (QuantizedConv1d, QuantizedConv2d, QuantizedEmbedding,
                            QuantizedLinear, QuantizedModule)
from ..nn.quantizer import TensorQuantizer, fit_qparams
from ..primitives.affine import expand_param, quantize
from ..records import LayerRecord
from ..types import PerTensor, PerToken, QParams
from .ops import (CARRIER_DTYPE, ONNX_TYPE_NAMES, dequantize_linear, fake_quant_arith,
                  fake_quant_dynamic, quantize_dequantize)
from .plan import WeightLayout, act_type, weight_layout

# ---------------------------------------------------------------------------- building blocks


class ExportWeight(nn.Module):
    """A weight as DequantizeLinear of integer codes, or a float initializer (fallback)."""

    def __init__(self, layout: WeightLayout, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.onnx_type, self.axis, self.block = layout.onnx_type, layout.axis, layout.block
        self.reshape, self.dtype = layout.reshape, dtype
        if layout.onnx_type is None:
            self.register_buffer("weight", layout.float_weight.detach().float().clone())
        else:
            self.register_buffer("codes", layout.codes.clone())
            self.register_buffer("scale", layout.scale.clone())
            self.register_buffer("zero_point", layout.zero.clone())

    def forward(self) -> torch.Tensor:
        if self.onnx_type is None:
            w = self.weight
        else:
            w = dequantize_linear(self.codes, self.scale, self.zero_point,
                                  onnx_type=self.onnx_type, axis=self.axis, block=self.block)
        if self.reshape is not None:
            w = w.reshape(self.reshape)
        return w if self.dtype == torch.float32 else w.to(self.dtype)


class ExportAct(nn.Module):
    """Fake quantization of an activation: ``qdq`` (QuantizeLinear -> DequantizeLinear),
    ``arith`` (lowbit's formula with constant qparams) or ``dynamic`` (qparams in the graph)."""

    def __init__(self, mode: str, tensors: dict[str, torch.Tensor], **settings):
        super().__init__()
        self.mode = mode
        for key, value in tensors.items():
            self.register_buffer(key, value.detach().clone())
        for key, value in settings.items():
            setattr(self, key, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.mode == "qdq":
            y = quantize_dequantize(xf, self.scale, self.zero_point, onnx_type=self.onnx_type,
                                    axis=self.axis)
        elif self.mode == "arith":
            y = fake_quant_arith(xf, self.inv_scale, self.scale, self.zero, self.qmin, self.qmax)
        else:
            y = fake_quant_dynamic(xf, self.qtype, self.scheme, self.per_token)
        return y.to(x.dtype)


def check_quantizer(name: str, role: str, q: TensorQuantizer | None) -> None:
    """Raise :class:`StateError` naming the layer if ``q`` is calibrating or uncalibrated."""
    if q is None:
        return
    if q.observing:
        raise StateError(f"{name}: {role} quantizer is still observing (calibration has not "
                         "ended); finish calibration (leave lowbit.calibrate(...) or call "
                         "model.end_calibration()) before exporting")
    if q.enabled and not q.ready:
        raise StateError(f"{name}: {role} quantizer ({q.spec.qtype.name}, "
                         f"{q.spec.granularity.kind}) is uncalibrated; calibrate the model "
                         "(lowbit.calibrate or lowbit.quantize_model) before exporting")


def act_export(name: str, q: TensorQuantizer, input_shape: tuple[int, ...] | None,
               opset: int) -> tuple[ExportAct, str, str | None]:
    """``(module, description, fallback note)`` for the activation quantizer ``q``."""
    spec = q.spec
    if spec.dynamic:
        kinds = {PerToken.kind: True, PerTensor.kind: False}
        if spec.granularity.kind not in kinds:
            raise ExportError(f"{name}: dynamic {spec.granularity.kind} activations cannot be "
                              "exported; allowed dynamic granularities: per_token, per_tensor. "
                              "Fix: use PerToken() or PerTensor() for dynamic activations")
        per_token = kinds[spec.granularity.kind]
        module = ExportAct("dynamic", {}, qtype=spec.qtype, scheme=spec.scheme,
                           per_token=per_token)
        return module, (f"dynamic {spec.qtype.name} {spec.scheme.value} "
                        f"{'per token' if per_token else 'per tensor'} in the graph"), None
    qp = q.qparams()
    shape = tuple(input_shape) if input_shape is not None else tuple(qp.scale.shape)
    scale, zero, block = fit_qparams(qp.scale.float(), qp.zero_point, shape, qp.block_size)
    varying = [d for d, n in enumerate(scale.shape) if n > 1]
    onnx_type = act_type(spec.qtype, opset)
    per_axis = len(varying) == 1 and block[varying[0]] == 1
    if onnx_type is not None and (not varying or per_axis):
        axis = varying[0] if varying else None
        s = scale.reshape(-1) if varying else scale.reshape(())
        z = zero.reshape(-1) if varying else zero.reshape(())
        layout = "per tensor" if axis is None else f"per axis {axis}"
        module = ExportAct("qdq", {"scale": s.contiguous(),
                                   "zero_point": z.to(CARRIER_DTYPE[onnx_type]).contiguous()},
                           onnx_type=onnx_type, axis=axis)
        return module, f"QuantizeLinear/DequantizeLinear {ONNX_TYPE_NAMES[onnx_type]} {layout}", \
            None
    s = expand_param(scale, shape, block)
    z = expand_param(zero, shape, block).float()
    module = ExportAct("arith", {"inv_scale": 1.0 / s, "scale": s, "zero": z},
                       qmin=spec.qtype.qmin, qmax=spec.qtype.qmax)
    why = (f"{spec.qtype.name} has no exact ONNX QuantizeLinear type at opset {opset}"
           if onnx_type is None else "activation qparams vary along more than one axis")
    return module, f"arithmetic fake-quant {spec.qtype.name}", \
        f"activation written as arithmetic (not Q/DQ): {why}"


# ---------------------------------------------------------------------------- layers


@dataclass
class Source:
    """What a lowbit layer holds, whatever its flavour (fake-quant or converted)."""

    weight: torch.Tensor | None  # float weight when not quantized
    codes: torch.Tensor | None  # [O, K] codes when quantized
    qparams: QParams | None
    weight_shape: tuple[int, ...]
    bias: torch.Tensor | None
    act: TensorQuantizer | None
    config: LayerConfig
    dtype: torch.dtype


def source_of_qat(name: str, m: QuantModuleMixin) -> Source:
    """The codes and qparams a calibrated fake-quant module's forward uses."""
    wq, aq = m.weight_quantizer, m.act_quantizer
    check_quantizer(name, "weight", wq)
    check_quantizer(name, "act", aq)
    w = m.weight.detach()
    codes = qp = None
    if wq is not None and wq.enabled:
        w2d = weight_matrix(w)
        qp = wq.qparams(w2d) if wq.spec.dynamic else wq.qparams()
        codes = quantize(w2d, qp)
    bias = getattr(m, "bias", None)
    return Source(None if codes is not None else w, codes, qp, tuple(w.shape),
                  None if bias is None else bias.detach(),
                  aq if aq is not None and aq.enabled else None, m.config, w.dtype)


def source_of_quantized(name: str, m: QuantizedModule) -> Source:
    """The integer codes and qparams a converted module holds."""
    check_quantizer(name, "act", m.act_quantizer)
    aq = m.act_quantizer
    return Source(None, m.weight_codes(), m.weight_qparams(), tuple(m.weight_shape),
                  m.bias, aq if aq is not None and aq.enabled else None,
                  LayerConfig(m.weight_spec, m.act_spec), m.weight_dtype)


FLOAT_WEIGHT = "float weights (not quantized)"


def _float_layout(w: torch.Tensor, transpose: bool) -> WeightLayout:
    w = w.t() if transpose else w
    return WeightLayout(None, None, None, None, None, None, w.contiguous(), None, FLOAT_WEIGHT)


def _weight(src: Source, opset: int, transpose: bool, shape=None) -> WeightLayout:
    if src.codes is None:
        return _float_layout(src.weight, transpose)
    return weight_layout(src.codes, src.qparams, opset, transpose=transpose, shape=shape)


def _record(name: str, module: nn.Module, config: LayerConfig, weight: str,
            act: str | None, notes: list[str]) -> LayerRecord:
    kernel = f"weight: {weight}; act: {act or 'float'}"
    if notes:
        action, reason = "fallback", "; ".join(notes)
    elif act is None and weight in (FLOAT_WEIGHT, "none"):
        action, reason = "float", "fake quantization is disabled: exported as float"
    else:
        action, reason = "quantized", "exported as ONNX Q/DQ"
    return LayerRecord(name=name, module_type=type(module).__name__, action=action,
                       reason=reason, config=config.to_dict(), kernel_path="onnx", kernel=kernel,
                       kernel_reason="; ".join(notes) or None)


class _ExportLayer(nn.Module):
    """Shared parts: the input's fake quantization, the weight, the bias."""

    def __init__(self, src: Source, layout: WeightLayout, act: ExportAct | None):
        super().__init__()
        self.act = act
        self.weight = ExportWeight(layout, src.dtype)
        self.register_buffer("bias", None if src.bias is None else src.bias.detach().clone())

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act is None else self.act(x)


class ExportLinear(_ExportLayer):
    """``x @ W^T + b`` with ``W^T`` dequantized from ``[K, O]`` codes (MatMul's layout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(self.quantized_input(x), self.weight())
        return y if self.bias is None else y + self.bias


class ExportConv(_ExportLayer):
    """A conv with dequantized weights, running the float conv class's own geometry."""

    GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups", "padding_mode", "_reversed_padding_repeated_twice")

    def __init__(self, src, layout, act, module: nn.Module, float_cls: type):
        super().__init__(src, layout, act)
        for attr in self.GEOMETRY:
            setattr(self, attr, getattr(module, attr))
        self.float_cls = float_cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.float_cls._conv_forward(self, self.quantized_input(x), self.weight(),
                                            self.bias)


class ExportEmbedding(_ExportLayer):
    """Gather rows of the dequantized table."""

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.weight())


def _build(kind: str, float_cls: type | None = None):
    """A rewrite function for a Linear/Conv/Embedding flavour (kind picks the layout)."""

    def rewrite_layer(name, module, opset, input_shape):
        src = (source_of_quantized(name, module) if isinstance(module, QuantizedModule)
               else source_of_qat(name, module))
        notes: list[str] = []
        act = act_desc = None
        if src.act is not None:
            act, act_desc, note = act_export(name, src.act, input_shape, opset)
            notes += [note] if note else []
        if kind == "linear":
            layout = _weight(src, opset, transpose=True)
            new = ExportLinear(src, layout, act)
        elif kind == "conv":
            layout = _weight(src, opset, transpose=False, shape=src.weight_shape)
            new = ExportConv(src, layout, act, module, float_cls)
        else:
            layout = _weight(src, opset, transpose=False)
            new = ExportEmbedding(src, layout, act)
        notes += [layout.note] if layout.note else []
        return new, _record(name, module, src.config, layout.describe, act_desc, notes)

    return rewrite_layer


def rewrite_quantizer(name, module: TensorQuantizer, opset, input_shape):
    """A standalone TensorQuantizer: its fake quantization (identity when disabled)."""
    check_quantizer(name, "tensor", module)
    config = LayerConfig(act=module.spec)
    if not module.enabled:
        return nn.Identity(), _record(name, module, config, "none", None, [])
    act, desc, note = act_export(name, module, input_shape, opset)
    return act, _record(name, module, config, "none", desc, [note] if note else [])


Rewrite = Callable[[str, nn.Module, int, "tuple[int, ...] | None"],
                   "tuple[nn.Module, LayerRecord]"]

#: exact module type -> rewrite(name, module, opset, input_shape) -> (module, record)
REWRITES: dict[type, Rewrite] = {
    QuantLinear: _build("linear"), QuantizedLinear: _build("linear"),
    QuantConv1d: _build("conv", nn.Conv1d), QuantizedConv1d: _build("conv", nn.Conv1d),
    QuantConv2d: _build("conv", nn.Conv2d), QuantizedConv2d: _build("conv", nn.Conv2d),
    QuantEmbedding: _build("embedding"), QuantizedEmbedding: _build("embedding"),
    TensorQuantizer: rewrite_quantizer,
}

_LOWBIT_BASES = (QuantModuleMixin, QuantizedModule, TensorQuantizer)


def register_rewrite(module_type: type, fn: Rewrite) -> None:
    """Teach the exporter a lowbit module type: ``fn(name, module, opset, input_shape)``
    returns ``(plain module, LayerRecord)``."""
    REWRITES[module_type] = fn


def is_lowbit(module: nn.Module) -> bool:
    """True for lowbit's quantizing modules (fake-quant, converted, quantizers)."""
    return isinstance(module, _LOWBIT_BASES)


def rewrite(model: nn.Module, opset: int,
            input_shapes: dict[str, tuple[int, ...]]) -> tuple[nn.Module, list[LayerRecord]]:
    """Replace every lowbit module of ``model`` in place; returns the new root and records.

    input_shapes: the input shape each lowbit module saw in a forward (name -> shape).
    """
    records: list[LayerRecord] = []

    def convert(name: str, module: nn.Module) -> nn.Module | None:
        fn = REWRITES.get(type(module))
        if fn is None:
            if is_lowbit(module):
                raise ExportError(
                    f"{name or 'model'} ({type(module).__name__}) cannot be exported: lowbit "
                    f"has no ONNX rewrite for it; allowed: "
                    f"{', '.join(sorted(t.__name__ for t in REWRITES))}. Fix: convert it to "
                    "one of these or add one with lowbit.export.modules.register_rewrite")
            return None
        new, record = fn(name, module, opset, input_shapes.get(name))
        records.append(record)
        return new

    def visit(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            new = convert(name, child)
            if new is None:
                visit(child, name)
            else:
                setattr(parent, child_name, new)

    root = convert("", model)
    if root is None:
        visit(model, "")
        root = model
    return root, records

