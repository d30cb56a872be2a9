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
runs the float op through one boundary, :meth:`_forward_float`.  With
``requested_kernel_path="reference"`` converted outputs are bit-identical to the calibrated QAT
module's outputs.

Kernels (``QuantizedLinear``): ``requested_kernel_path`` (default ``"auto"``; set it with
:meth:`QuantizedModule.set_kernel_path` or :func:`set_kernel_path` for a whole model)
runs the layer through :func:`lowbit.kernels.prepare_linear` on the plan the layer makes once
(:meth:`QuantizedLinear.kernel_plan`): the kernel registry decides which integer kernels take
its formats, ``auto`` times them against the float path per row count on first use (cached
on disk), and formats no integer kernel takes run the float path.  The prepared kernel is
cached as a plain attribute (never in ``state_dict``) and rebuilt when
``qdata``/``scale``/``zero_point``/the input qparams change (new tensors, in-place writes,
``load_state_dict``, ``.to()``).  Conv and embedding layers keep the reference forward;
``kernel_path``, ``kernel`` and ``kernel_reason`` say what runs and why (and
``lowbit.model.convert`` copies them into the layer's record).  Kernel outputs match the
reference up to float summation order (integer kernels accumulate exactly).

Build them with ``from_qat`` (after calibration), ``from_float``/``from_linear`` (weights
quantized directly), or the constructor (zero placeholders, to ``load_state_dict`` into).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LayerConfig, QuantSpec, check_kernel_path
from ..errors import ConfigError
from ..types import Scheme
from .qat import (QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear, _meta_table,
                  check_embedding_config)
from .quantized_base import DEFAULT_WEIGHT_SPEC, PACK_MAX_BITS, QuantizedModule  # noqa: F401


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
        """Quantize ``linear``'s weights (int8 symmetric per output
        channel by default); ``act_spec`` optionally quantizes the input."""
        return cls.from_float(linear, LayerConfig(weight=weight_spec or DEFAULT_WEIGHT_SPEC,
                                                  act=act_spec))

    _reference_op = "F.linear"

    def _forward_float(self, x_hat, w_hat):
        return F.linear(x_hat, w_hat, self.bias)

    # ------------------------------------------------------------------ kernels

    def act_format(self):
        """The input's :class:`~lowbit.kernels.formats.ActFormat` (lowered from its spec once
        per spec), or None for a float input."""
        from ..kernels.formats import ActFormat
        aq = self.act_quantizer
        if aq is None:
            return None
        cached = self.__dict__.get("_act_format")
        if cached is None or cached[0] is not aq.spec:
            cached = (aq.spec, ActFormat.from_spec(aq.spec))
            self.__dict__["_act_format"] = cached
        return cached[1]

    def kernel_unsupported(self) -> str | None:
        """Why this layer cannot run a kernel path now (None when it can).  Formats are not
        judged here: the kernel registry's ``supports`` does that when the layer plans."""
        aq = self.act_quantizer
        if aq is not None and not aq.ready:
            return "static input quantizer not calibrated; reference path"
        if not self.scale.is_floating_point() or self.scale.dtype != torch.float32:
            return f"scale dtype {self.scale.dtype}: kernels take float32 scales; reference path"
        return None

    def _kernel_key(self) -> tuple:
        ts = [self.qdata, self.scale, self.zero_point]
        if self.act_quantizer is not None:
            ts += [self.act_quantizer.scale, self.act_quantizer.zero_point]
        return (self.requested_kernel_path,) + tuple(
            (t.device, t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in ts)

    def _quant_weight(self):
        from ..kernels import quant_weight
        return quant_weight(self.qdata, self.scale, self.zero_point, self.qtype, self.block_size,
                            symmetric=self.weight_spec.scheme is not Scheme.AFFINE,
                            k=self.in_dim)

    def kernel_plan(self):
        """The layer's kernel :class:`~lowbit.kernels.dispatch.Plan` for float32 inputs, made
        once per state of weight, qparams and requested path (nothing is packed): convert
        records it and forward runs it.  Raises :class:`KernelUnavailableError` when a forced
        path cannot run this layer."""
        key = self._kernel_key()
        cached = self.__dict__.get("_plan")
        if cached is None or cached[0] != key:
            from ..kernels import plan
            from ..kernels.registry import linear_op
            w, fmt = self._quant_weight(), self.act_format()
            cached = (key, plan(linear_op(w, fmt), w, torch.float32, self.requested_kernel_path,
                                fmt))
            self.__dict__["_plan"] = cached
        return cached[1]

    def _runtime_act(self):
        """What quantizes the input on the kernel path: None (a float input, or a dynamic
        int8 one the prepared kernel quantizes itself), the calibrated int8 qparams of a
        static input, or this layer's own quantizer (formats only the float paths take)."""
        from ..kernels import ActQuantizer
        fmt = self.act_format()
        if fmt is None or (fmt.mode is not None and not fmt.static):
            return None
        aq = self.act_quantizer
        if fmt.mode is not None:
            return ActQuantizer(fmt.mode, scale=aq.scale.detach().reshape(1, 1).float(),
                                zero=aq.zero_point.detach().reshape(1, 1).float())
        return _OwnQuantizer(aq)

    def _prepared(self):
        """The cached :class:`~lowbit.kernels.PreparedLinear` (built now if stale)."""
        from ..kernels import prepare_linear
        key = self._kernel_key()
        cached = self.__dict__.get("_kernel")
        if cached is None or self.__dict__.get("_kernel_cache_key") != key:
            plan = self.kernel_plan()
            prepared = prepare_linear(self.qdata, self.scale, self.zero_point, self.qtype,
                                      self.block_size, act=self.act_format(),
                                      path=self.requested_kernel_path,
                                      symmetric=self.weight_spec.scheme is not Scheme.AFFINE,
                                      plan=plan, k=self.in_dim)
            cached = (prepared, self._runtime_act())
            self.__dict__["_kernel"], self.__dict__["_kernel_cache_key"] = cached, key
        return cached[0]

    def _kernel_fields(self) -> tuple[str, str, str]:
        """``(kernel_path, kernel, kernel_reason)`` of the layer's plan."""
        from ..errors import KernelUnavailableError
        try:
            p = self.kernel_plan()
        except KernelUnavailableError as exc:
            return self.requested_kernel_path, "unavailable", str(exc)
        return p.summary()

    def _forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        if torch.compiler.is_compiling():
            traced = (self.__dict__.get("_frozen") or {}).get(x.dtype)
            if traced is not None:
                return traced(x, bias)
            return _outside_graph(self._eager_kernel, x, bias)  # not frozen
        return self._eager_kernel(x, bias)

    def _eager_kernel(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The kernel as planned on first use (under a plain ``torch.compile`` this runs
        outside the graph: :func:`lowbit.compile` freezes the kernels so they fuse)."""
        prepared = self._prepared()
        return prepared(x, bias, self.__dict__["_kernel"][1])

    def freeze_kernels(self, dtype: torch.dtype = torch.float32):
        """Decide and pack this layer's kernel for every row count now, for inputs of
        ``dtype``, so that ``torch.compile`` traces plain tensor code (see
        :func:`lowbit.compile`).  Returns the frozen :class:`~lowbit.kernels.linear.TracedLinear`."""
        traced = self._prepared().traceable(dtype)
        traced.act = self.__dict__["_kernel"][1] or traced.act
        frozen = dict(self.__dict__.get("_frozen") or {})
        frozen[dtype] = traced
        self.__dict__["_frozen"] = frozen
        return traced


@torch.compiler.disable
def _outside_graph(fn, *args):
    """``fn(*args)`` run eagerly even inside ``torch.compile`` (a graph break)."""
    return fn(*args)


class _OwnQuantizer:
    """A layer's own input quantizer seen as a kernel act quantizer, for input formats only
    the float paths (``dense``, ``reference``) take: both fake-quantize with it."""

    def __init__(self, quantizer):
        self.quantizer = quantizer

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(x.float())

    reference = fake


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

    _reference_op = "conv"

    def kernel_unsupported(self) -> str | None:
        return ("conv kernels not wired: auto does not time conv2d kernels yet (it would "
                "run the float conv), so the reference path "
                "(fake-quant input, dequantized weight, float conv) is kept")

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

    _reference_op = "F.embedding"

    def kernel_unsupported(self) -> str | None:
        return "embedding lookup: dequantizing the rows is the op; reference path"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Look up rows of codes first, then dequantize only those (bit-identical to
        dequantizing the whole table and looking up, which a table whose qparams span
        several rows still does)."""
        if self.block_size[0] != 1 or x.dtype not in (torch.int32, torch.int64):
            return super().forward(x)
        if (x.numel() and not torch.compiler.is_compiling()
                and (int(x.min()) < 0 or int(x.max()) >= self.num_embeddings)):
            from ..errors import InputError
            raise InputError(f"embedding indices span [{int(x.min())}, {int(x.max())}] but "
                             f"the table has {self.num_embeddings} rows; pass indices in "
                             f"[0, {self.num_embeddings - 1}]")
        idx = x.reshape(-1)
        codes = self.qdata.index_select(0, idx)
        if self.packed:
            from ..primitives.packing import unpack_codes
            codes = unpack_codes(codes, self.qtype, self.in_dim)
        from ..primitives.affine import dequantize
        from ..types import QParams
        qp = QParams(self.scale.index_select(0, idx), self.zero_point.index_select(0, idx),
                     self.qtype, self.block_size)
        rows = dequantize(codes, qp, self.weight_dtype)
        return rows.reshape(*x.shape, self.embedding_dim)

    def _forward_float(self, x_hat, w_hat):
        return F.embedding(x_hat, w_hat, self.padding_idx, None, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


def set_kernel_path(model: nn.Module, path: str) -> nn.Module:
    """Ask every real low-bit module of ``model`` (or ``model`` itself) for kernel ``path``
    (:data:`~lowbit.config.KERNEL_PATHS`); ``"reference"`` makes a converted model
    bit-identical to its fake-quant model."""
    check_kernel_path(path)
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module converted by "
                          "lowbit.convert", fix="set_kernel_path(lowbit.convert(qmodel), path)")
    for m in model.modules():
        if isinstance(m, QuantizedModule):
            m.set_kernel_path(path)
    return model

