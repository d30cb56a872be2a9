"""Real low-bit modules: integer weights in buffers, a plain-PyTorch reference forward.

``QuantizedLinear``, ``QuantizedConv1d``, ``QuantizedConv2d`` and ``QuantizedEmbedding`` hold

``qdata``       the weight's integer codes in its 2-D view ``[O, K]`` (``K = I/groups·kh·kw``):
                int8/uint8/int16/int32 codes, or for grids of 4 bits or fewer the codes
                **packed** along ``K`` into uint8 ``[O, ceil(K·bits/8)]`` (:func:`pack_codes`);
``scale``, ``zero_point``  the weight's qparams (shaped as in :class:`QParams` for ``[O, K]``);
``bias``        float (a buffer, or None);
``act_quantizer``  a :class:`TensorQuantizer` for the input: frozen static ``scale``/
                ``zero_point``, or a dynamic spec (None when the input stays float);

plus the metadata ``weight_spec``, ``qtype``, ``block_size`` and ``weight_shape``.

Forward fake-quantizes the input exactly as the QAT module does, dequantizes the weight and
runs the float op through one boundary, :meth:`_forward_float`, which a kernel dispatcher can
replace.  Converted outputs are bit-identical to the calibrated QAT module's outputs.

Build them with ``from_qat`` (after calibration), ``from_float``/``from_linear`` (weights
quantized directly), or the constructor (zero placeholders, to ``load_state_dict`` into).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LayerConfig, QuantSpec
from ..errors import ConfigError, StateError
from ..primitives.affine import dequantize, quantize
from ..primitives.packing import pack_codes, packed_size, unpack_codes
from ..types import PerChannel, QParams, Scheme, int8
from .qat import (QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear, QuantModuleMixin,
                  _meta_table, check_embedding_config, weight_matrix)
from .quantizer import TensorQuantizer

#: Grids of at most this many bits are stored packed (two int4 codes per byte).
PACK_MAX_BITS = 4

#: ``QuantizedLinear.from_linear``'s default weight spec (seed 001: int8 symmetric per channel).
DEFAULT_WEIGHT_SPEC = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0))


class QuantizedModule(nn.Module):
    """Weight storage, activation quantizer and forward shared by the real modules."""

    _QAT_CLS: type = QuantModuleMixin

    def _init_storage(self, weight_shape: tuple[int, ...], weight_spec: QuantSpec,
                      act_spec: QuantSpec | None, bias: bool, dtype=None, device=None) -> None:
        """Zero placeholders of the right shapes for a weight of ``weight_shape``."""
        if not isinstance(weight_spec, QuantSpec):
            raise ConfigError("weight_spec", weight_spec, "a lowbit QuantSpec",
                              fix="pass QuantSpec(...) for the weight; a layer whose weight "
                                  "stays float is not converted")
        if act_spec is not None and not isinstance(act_spec, QuantSpec):
            raise ConfigError("act_spec", act_spec, "a lowbit QuantSpec or None",
                              fix="pass QuantSpec(...) or None to keep the input float")
        self.weight_spec = weight_spec
        self.qtype = weight_spec.qtype
        self.weight_shape = tuple(int(n) for n in weight_shape)
        self.weight_dtype = dtype or torch.get_default_dtype()
        rows, cols = self.weight_shape[0], 1
        for n in self.weight_shape[1:]:
            cols *= n
        self.in_dim = cols
        self.block_size = weight_spec.granularity.block_size((rows, cols))
        qshape = tuple(n // b for n, b in zip((rows, cols), self.block_size))
        self.packed = self.qtype.bits <= PACK_MAX_BITS
        if self.packed:
            qdata = torch.zeros(rows, packed_size(cols, self.qtype.bits), dtype=torch.uint8)
        else:
            qdata = torch.zeros(rows, cols, dtype=self.qtype.storage_dtype)
        self.register_buffer("qdata", qdata.to(device))
        self.register_buffer("scale", torch.ones(qshape, device=device))
        self.register_buffer("zero_point", torch.zeros(qshape, dtype=torch.int32, device=device))
        self.register_buffer("bias", torch.zeros(rows, dtype=self.weight_dtype, device=device)
                             if bias else None)
        self.act_quantizer = None
        if act_spec is not None:
            self.act_quantizer = TensorQuantizer(act_spec.replace(learnable=False)).to(device)

    @property
    def act_spec(self) -> QuantSpec | None:
        """The input's spec (static or dynamic), or None for a float input."""
        return None if self.act_quantizer is None else self.act_quantizer.spec

    def weight_qparams(self) -> QParams:
        """The weight's qparams, for its 2-D view ``[O, K]``."""
        return QParams(self.scale, self.zero_point, self.qtype, self.block_size)

    def set_weight(self, weight: torch.Tensor, qp: QParams) -> None:
        """Quantize the float ``weight`` with ``qp`` (for its 2-D view) into ``qdata``."""
        w2d = weight_matrix(weight.detach())
        if tuple(weight.shape) != self.weight_shape or tuple(qp.block_size) != self.block_size:
            raise ConfigError("weight", f"shape {tuple(weight.shape)}, block {qp.block_size}",
                              f"shape {self.weight_shape}, block {self.block_size}",
                              fix="quantize a weight shaped like this module's, with qparams "
                                  "of its weight_spec's granularity")
        self.scale = qp.scale.detach().to(self.scale.device, torch.float32).clone()
        self.zero_point = qp.zero_point.detach().to(self.scale.device, torch.int32).clone()
        codes = quantize(w2d.to(self.scale.device), self.weight_qparams())
        self.qdata = pack_codes(codes, self.qtype) if self.packed else codes

    def weight_codes(self) -> torch.Tensor:
        """Unpacked integer codes ``[O, K]``."""
        if self.packed:
            return unpack_codes(self.qdata, self.qtype, self.in_dim)
        return self.qdata

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight ``(q - z)·s`` in the original shape and dtype."""
        w2d = dequantize(self.weight_codes(), self.weight_qparams(), self.weight_dtype)
        return w2d.reshape(self.weight_shape)

    def nbytes(self) -> int:
        """Bytes really stored: qdata, scale, zero_point, bias and the input's qparams."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = x if self.act_quantizer is None else self.act_quantizer(x)
        return self._forward_float(x_hat, self.dequantized_weight())

    def _forward_float(self, x_hat: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
        """The float op on the quantized input and dequantized weight (kernel boundary)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ construction

    @classmethod
    def _empty_like(cls, module: nn.Module, weight_spec: QuantSpec,
                    act_spec: QuantSpec | None) -> "QuantizedModule":
        """Placeholders shaped for ``module`` (a float or QAT module); subclasses define it."""
        raise NotImplementedError

    @classmethod
    def from_qat(cls, qat: nn.Module) -> "QuantizedModule":
        """Convert a calibrated QAT module: codes from its weight qparams, its input qparams.

        Raises :class:`StateError` when a quantizer still needs calibration.
        """
        if type(qat) is not cls._QAT_CLS:
            raise ConfigError("qat", type(qat).__name__, f"a {cls._QAT_CLS.__name__}",
                              fix=f"convert a {cls._QAT_CLS.__name__} (from_float first), or "
                                  "look the class up in lowbit.nn.QUANTIZED_MODULES")
        wq, aq = qat.weight_quantizer, qat.act_quantizer
        if wq is None:
            raise ConfigError("LayerConfig.weight", None, "a QuantSpec to convert to integers",
                              fix="keep this layer as its QAT module (or float), or give it "
                                  "a weight spec")
        for name, q in (("weight", wq), ("act", aq)):
            if q is not None and (q.observing or not q.ready):
                raise StateError(f"{type(qat).__name__}.{name}_quantizer is {q.state}: calibrate "
                                 "before converting (start_observing(), run data, freeze())")
        module = cls._empty_like(qat, wq.spec, None if aq is None else aq.spec)
        module.to(qat.weight.device)
        w2d = weight_matrix(qat.weight.detach())
        if wq.is_frozen:
            qp = wq.qparams()
        else:  # dynamic or data-free fixed point: qparams of the weight as it is now
            qp = TensorQuantizer(wq.spec).freeze(w2d).qparams(w2d)
        module.set_weight(qat.weight, qp)
        if getattr(qat, "bias", None) is not None:
            module.bias = qat.bias.detach().clone()
        if aq is not None and aq.is_frozen:
            module.act_quantizer.set_qparams(aq.qparams())
        return module.train(qat.training)

    @classmethod
    def from_float(cls, module: nn.Module, config: LayerConfig) -> "QuantizedModule":
        """Quantize ``module``'s weight directly with ``config.weight``'s observer.

        A static ``config.act`` leaves the input quantizer to calibrate
        (``act_quantizer.start_observing()``, data, ``freeze()``) before forward.
        """
        if not isinstance(config, LayerConfig):
            raise ConfigError("config", config, "a lowbit LayerConfig",
                              fix="pass LayerConfig(weight=QuantSpec(...), act=None)")
        qat_float = cls._QAT_CLS._FLOAT_CLS
        if isinstance(module, QuantModuleMixin) or not isinstance(module, qat_float):
            raise ConfigError("module", type(module).__name__, f"a float {qat_float.__name__}",
                              fix=f"use {cls.__name__}.from_qat for QAT modules")
        if config.weight is None:
            raise ConfigError("LayerConfig.weight", None, "a QuantSpec to convert to integers",
                              fix="give the weight a spec, e.g. QuantSpec(qtype=lowbit.int8, "
                                  "granularity=PerChannel(0))")
        out = cls._empty_like(module, config.weight, config.act)
        out.to(module.weight.device)
        w2d = weight_matrix(module.weight.detach())
        out.set_weight(module.weight, TensorQuantizer(config.weight).freeze(w2d).qparams(w2d))
        if getattr(module, "bias", None) is not None:
            out.bias = module.bias.detach().clone()
        return out

    def summary(self) -> dict:
        """Weight spec and storage, and the input quantizer's summary."""
        return {"module_type": type(self).__name__, "weight_spec": self.weight_spec.to_dict(),
                "qtype": self.qtype.name, "block_size": list(self.block_size),
                "packed": self.packed, "nbytes": self.nbytes(),
                "act": None if self.act_quantizer is None else self.act_quantizer.summary()}

    def extra_repr(self) -> str:
        return (f"weight_shape={self.weight_shape}, qtype={self.qtype.name}, "
                f"block_size={self.block_size}, packed={self.packed}")


class QuantizedLinear(QuantizedModule):
    """Linear layer with integer weights (reference forward: dequantize, ``F.linear``)."""

    _QAT_CLS = QuantLinear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_spec: QuantSpec = DEFAULT_WEIGHT_SPEC, act_spec: QuantSpec | None = None,
                 dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_storage((out_features, in_features), weight_spec, act_spec, bias, dtype, device)

    @classmethod
    def _empty_like(cls, module, weight_spec, act_spec):
        return cls(module.in_features, module.out_features, module.bias is not None,
                   weight_spec=weight_spec, act_spec=act_spec, dtype=module.weight.dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_spec: QuantSpec | None = None,
                    act_spec: QuantSpec | None = None) -> "QuantizedLinear":
        """Seed 001's constructor: quantize ``linear``'s weights (int8 symmetric per output
        channel by default); ``act_spec`` optionally quantizes the input."""
        return cls.from_float(linear, LayerConfig(weight=weight_spec or DEFAULT_WEIGHT_SPEC,
                                                  act=act_spec))

    def _forward_float(self, x_hat, w_hat):
        return F.linear(x_hat, w_hat, self.bias)


class _QuantizedConvNd(QuantizedModule):
    """Conv layer with integer weights; forward reuses the float conv's own arithmetic."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *,
                 weight_spec: QuantSpec = DEFAULT_WEIGHT_SPEC, act_spec: QuantSpec | None = None,
                 dtype=None, device=None):
        super().__init__()
        geometry = self._QAT_CLS._FLOAT_CLS(in_channels, out_channels, kernel_size, stride,
                                            padding, dilation, groups, bias, padding_mode,
                                            device="meta")
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, name, getattr(geometry, name))
        self._init_storage(tuple(geometry.weight.shape), weight_spec, act_spec, bias, dtype,
                           device)

    @classmethod
    def _empty_like(cls, module, weight_spec, act_spec):
        args = QuantConv2d.conv_args(module)
        return cls(**args, weight_spec=weight_spec, act_spec=act_spec, dtype=module.weight.dtype)

    def _forward_float(self, x_hat, w_hat):
        # the float class's own padding/conv code, run on this module's geometry
        return self._QAT_CLS._FLOAT_CLS._conv_forward(self, x_hat, w_hat, self.bias)


class QuantizedConv1d(_QuantizedConvNd):
    """``Conv1d`` with integer weights."""

    _QAT_CLS = QuantConv1d


class QuantizedConv2d(_QuantizedConvNd):
    """``Conv2d`` with integer weights (1×1, grouped and depthwise included)."""

    _QAT_CLS = QuantConv2d


class QuantizedEmbedding(QuantizedModule):
    """Embedding with an integer table (weights only)."""

    _QAT_CLS = QuantEmbedding

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None,
                 max_norm=None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, *, weight_spec: QuantSpec = DEFAULT_WEIGHT_SPEC,
                 act_spec: QuantSpec | None = None, dtype=None, device=None):
        super().__init__()
        check_embedding_config(LayerConfig(weight=weight_spec, act=act_spec), max_norm)
        geometry = nn.Embedding(num_embeddings, embedding_dim, padding_idx,
                                _weight=_meta_table(num_embeddings, embedding_dim, "meta", None))
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = geometry.padding_idx  # normalized (negative -> positive)
        self.max_norm, self.norm_type = None, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        self._init_storage((num_embeddings, embedding_dim), weight_spec, None, False, dtype,
                           device)

    @classmethod
    def _empty_like(cls, module, weight_spec, act_spec):
        return cls(**QuantEmbedding.embedding_args(module), weight_spec=weight_spec,
                   act_spec=act_spec, dtype=module.weight.dtype)

    def _forward_float(self, x_hat, w_hat):
        return F.embedding(x_hat, w_hat, self.padding_idx, None, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
