"""Fake-quant (QAT) modules: ``QuantLinear``, ``QuantConv1d``, ``QuantConv2d``, ``QuantEmbedding``.

Each subclasses its float module (attribute names ``weight``, ``bias``, ``in_features``...
and state_dict keys stay familiar) and adds ``weight_quantizer`` (None when
``config.weight`` is None) and ``act_quantizer`` at the module *input* (None when
``config.act`` is None).  Tables look modules up by exact type, so a QAT module is never
mistaken for its float parent.

``from_float`` **shares** the float module's ``weight``/``bias`` Parameter objects (no copy):
training the QAT module trains them, and ``to_float`` returns a float module holding the same
Parameters.  Deep-copy the float model first to keep an untouched teacher.

Weights are quantized as a matrix: a weight ``[O, ...]`` is seen as ``[O, I/groups·kh·kw]``
by its quantizer (so ``PerGroup(size, -1)`` groups run along the flattened inputs of a conv,
and ``PerChannel(0)`` is one scale per output channel).

Life cycle: :meth:`start_observing` (the weight quantizer sees the weight, the activation
quantizer sees inputs during calibration forwards), :meth:`freeze` (the weight is observed
again as it is now; qparams become buffers), then fake-quantized forwards with straight-
through gradients, and LSQ step sizes as Parameters when a spec is ``learnable`` (create the
optimizer after ``freeze``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LayerConfig
from ..errors import ConfigError
from .quantizer import TensorQuantizer


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The 2-D view ``[O, rest]`` in which every weight is quantized."""
    return weight.reshape(weight.shape[0], -1)


class QuantModuleMixin:
    """Quantizer plumbing shared by the QAT modules (mixed in before the float class)."""

    _FLOAT_CLS: type = nn.Module

    def _init_quantizers(self, config: LayerConfig, fq_impl: str, device=None) -> None:
        if not isinstance(config, LayerConfig):
            raise ConfigError("config", config, "a lowbit LayerConfig",
                              fix="pass LayerConfig(weight=QuantSpec(...), act=QuantSpec(...))")
        self.config = config
        self.fq_impl = fq_impl
        self.weight_quantizer = (TensorQuantizer(config.weight, fq_impl)
                                 if config.weight is not None else None)
        self.act_quantizer = (TensorQuantizer(config.act, fq_impl)
                              if config.act is not None else None)
        if device is not None and torch.device(device).type != "meta":
            for q in self.quantizers():
                q.to(device)

    @classmethod
    def _check_float(cls, module: nn.Module) -> None:
        if isinstance(module, QuantModuleMixin) or not isinstance(module, cls._FLOAT_CLS):
            raise ConfigError("module", type(module).__name__,
                              f"a float {cls._FLOAT_CLS.__module__}.{cls._FLOAT_CLS.__name__}",
                              fix=f"pass the float module; {cls.__name__}.to_float() undoes a "
                                  "previous from_float")

    def _adopt(self, module: nn.Module) -> None:
        """Share ``module``'s weight/bias and move the quantizers to their device."""
        self.weight = module.weight
        if getattr(module, "bias", None) is not None:
            self.bias = module.bias
        for q in self.quantizers():
            q.to(module.weight.device)
        self.train(module.training)

    def quantizers(self) -> list[TensorQuantizer]:
        """The quantizers present (weight first)."""
        return [q for q in (self.weight_quantizer, self.act_quantizer) if q is not None]

    @property
    def fallback_reason(self) -> str | None:
        """Why a quantizer fell back from ``fq_impl='fused'`` to the reference, or None."""
        reasons = [f"{n}: {q.fallback_reason}" for n, q in
                   (("weight", self.weight_quantizer), ("act", self.act_quantizer))
                   if q is not None and q.fallback_reason]
        return "; ".join(reasons) or None

    def start_observing(self) -> "QuantModuleMixin":
        """Begin calibration: the weight is observed now, inputs on each forward."""
        for q in self.quantizers():
            q.start_observing(reset=True)
        if self.weight_quantizer is not None:
            self.weight_quantizer.observe(weight_matrix(self.weight))
        return self

    def freeze(self) -> "QuantModuleMixin":
        """End calibration: the weight is observed as it is now and all qparams are held.

        Idempotent: qparams already held (and possibly trained) are kept unless
        :meth:`start_observing` was called since.
        """
        wq = self.weight_quantizer
        if wq is not None and (wq.observing or not wq.is_frozen):
            wq.freeze(weight_matrix(self.weight).detach())
        if self.act_quantizer is not None:
            self.act_quantizer.freeze()
        return self

    def set_fake_quant(self, enabled: bool = True) -> "QuantModuleMixin":
        """Turn fake quantization on or off (off: the float module's forward)."""
        for q in self.quantizers():
            q.enabled = bool(enabled)
        return self

    def quantized_weight(self) -> torch.Tensor:
        """The weight as forward uses it: fake-quantized (float, the weight's shape)."""
        wq, w = self.weight_quantizer, self.weight
        if wq is None or wq.observing or not wq.enabled:
            return w
        return wq(weight_matrix(w)).reshape(w.shape)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as forward uses it (observed, passed through or fake-quantized)."""
        return x if self.act_quantizer is None else self.act_quantizer(x)

    def summary(self) -> dict:
        """``fq_impl`` and the summaries of both quantizers (None where absent)."""
        return {"module_type": type(self).__name__, "fq_impl": self.fq_impl,
                "fallback_reason": self.fallback_reason,
                "weight": None if self.weight_quantizer is None
                else self.weight_quantizer.summary(),
                "act": None if self.act_quantizer is None else self.act_quantizer.summary()}

    def _float_copy(self, float_module: nn.Module) -> nn.Module:
        float_module.weight = self.weight
        if getattr(self, "bias", None) is not None:
            float_module.bias = self.bias
        return float_module.train(self.training)


class QuantLinear(QuantModuleMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized weight and input."""

    _FLOAT_CLS = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 config: LayerConfig, fq_impl: str = "reference", device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._init_quantizers(config, fq_impl, device)

    @classmethod
    def from_float(cls, module: nn.Linear, config: LayerConfig,
                   fq_impl: str = "reference") -> "QuantLinear":
        """QAT twin of ``module`` sharing its Parameters."""
        cls._check_float(module)
        q = cls(module.in_features, module.out_features, module.bias is not None,
                config=config, fq_impl=fq_impl, device="meta")
        q._adopt(module)
        return q

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the same Parameters."""
        return self._float_copy(nn.Linear(self.in_features, self.out_features,
                                          self.bias is not None, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


class _QuantConvNd(QuantModuleMixin):
    """Shared ``from_float``/``to_float``/``forward`` of the conv QAT modules."""

    @staticmethod
    def conv_args(module: nn.Module) -> dict:
        """Every constructor argument of a float conv (stride, padding, groups...)."""
        return dict(in_channels=module.in_channels, out_channels=module.out_channels,
                    kernel_size=module.kernel_size, stride=module.stride,
                    padding=module.padding, dilation=module.dilation, groups=module.groups,
                    bias=module.bias is not None, padding_mode=module.padding_mode)

    @classmethod
    def from_float(cls, module: nn.Module, config: LayerConfig, fq_impl: str = "reference"):
        """QAT twin of ``module`` (all conv arguments preserved) sharing its Parameters."""
        cls._check_float(module)
        q = cls(**cls.conv_args(module), config=config, fq_impl=fq_impl, device="meta")
        q._adopt(module)
        return q

    def to_float(self) -> nn.Module:
        """A plain conv of the float class holding the same Parameters."""
        return self._float_copy(self._FLOAT_CLS(**self.conv_args(self), device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` with fake-quantized weight and input."""

    _FLOAT_CLS = nn.Conv1d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, config: LayerConfig,
                 fq_impl: str = "reference", device=None, dtype=None):
        nn.Conv1d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias, padding_mode, device=device, dtype=dtype)
        self._init_quantizers(config, fq_impl, device)


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight and input."""

    _FLOAT_CLS = nn.Conv2d

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, config: LayerConfig,
                 fq_impl: str = "reference", device=None, dtype=None):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                           dilation, groups, bias, padding_mode, device=device, dtype=dtype)
        self._init_quantizers(config, fq_impl, device)


def check_embedding_config(config: LayerConfig, max_norm) -> None:
    """Embeddings quantize weights only and cannot renormalize a quantized table."""
    if isinstance(config, LayerConfig) and config.act is not None:
        raise ConfigError("LayerConfig.act", config.act.to_dict(), "None for an Embedding",
                          fix="embeddings take integer indices; quantize only the weight "
                              "(LayerConfig(weight=..., act=None))")
    if max_norm is not None:
        raise ConfigError("Embedding.max_norm", max_norm, "None",
                          fix="max_norm renormalizes the table in place, which a quantized "
                              "table cannot do; renormalize the weights before quantizing")


def _meta_table(num_embeddings: int, embedding_dim: int, device, dtype) -> torch.Tensor | None:
    """An uninitialised meta table: building a module on "meta" skips ``normal_``, which on
    meta tensors imports torch's compiler stack (seconds).  None off meta (normal init)."""
    if device is None or torch.device(device).type != "meta":
        return None
    return torch.empty(num_embeddings, embedding_dim, device="meta", dtype=dtype)


class QuantEmbedding(QuantModuleMixin, nn.Embedding):
    """``nn.Embedding`` with a fake-quantized table (weights only)."""

    _FLOAT_CLS = nn.Embedding

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None,
                 max_norm=None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, *, config: LayerConfig, fq_impl: str = "reference",
                 device=None, dtype=None):
        check_embedding_config(config, max_norm)
        nn.Embedding.__init__(self, num_embeddings, embedding_dim, padding_idx, max_norm,
                              norm_type, scale_grad_by_freq, sparse,
                              _weight=_meta_table(num_embeddings, embedding_dim, device, dtype),
                              device=device, dtype=dtype)
        self._init_quantizers(config, fq_impl, device)

    @staticmethod
    def embedding_args(module: nn.Module) -> dict:
        """Constructor arguments of a float embedding."""
        return dict(num_embeddings=module.num_embeddings, embedding_dim=module.embedding_dim,
                    padding_idx=module.padding_idx, max_norm=module.max_norm,
                    norm_type=module.norm_type, scale_grad_by_freq=module.scale_grad_by_freq,
                    sparse=module.sparse)

    @classmethod
    def from_float(cls, module: nn.Embedding, config: LayerConfig,
                   fq_impl: str = "reference") -> "QuantEmbedding":
        """QAT twin of ``module`` sharing its table."""
        cls._check_float(module)
        q = cls(**cls.embedding_args(module), config=config, fq_impl=fq_impl, device="meta")
        q._adopt(module)
        return q

    def to_float(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` holding the same table."""
        args = self.embedding_args(self)
        table = _meta_table(self.num_embeddings, self.embedding_dim, "meta", None)
        return self._float_copy(nn.Embedding(**args, _weight=table))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, self.quantized_weight(), self.padding_idx, None, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
