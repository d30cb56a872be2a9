"""The base of the real low-bit modules: integer weight storage, qparams, kernel caching.

See :mod:`lowbit.nn.quantized` for the modules built on it and what they store.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LayerConfig, QuantSpec, check_kernel_path
from ..errors import ConfigError, StateError
from ..primitives.affine import dequantize, quantize
from ..primitives.packing import pack_codes, packed_size, unpack_codes
from ..types import PerChannel, QParams, Scheme, int8, n_blocks
from .qat import (QuantModuleMixin,
                  weight_matrix)
from .quantizer import TensorQuantizer

#: Grids of at most this many bits are stored packed (two int4 codes per byte).
PACK_MAX_BITS = 4

#: ``QuantizedLinear.from_linear``'s default weight spec: int8 symmetric per output channel.
DEFAULT_WEIGHT_SPEC = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0))


class QuantizedModule(nn.Module):
    """Weight storage, activation quantizer and forward shared by the real modules."""

    _QAT_CLS: type = QuantModuleMixin
    #: The kernel path a new module asks for (layers without kernels run the reference
    #: path whatever it is, and ``kernel_reason`` says so).
    DEFAULT_KERNEL_PATH = "auto"

    # ------------------------------------------------------------------ kernels

    def set_kernel_path(self, path: str) -> "QuantizedModule":
        """Choose how forward runs: ``"auto"`` (measured per input size), ``"integer"``,
        ``"dense"`` or ``"reference"`` (dequantize + float op, bit-identical to fake-quant).
        Modules with no kernels wired (conv, embedding) keep the reference path and say why
        (``kernel_reason``); a forced path a linear layer's formats cannot take raises
        :class:`~lowbit.errors.KernelUnavailableError` when it plans."""
        self.requested_kernel_path = check_kernel_path(path)
        self._invalidate_kernel()
        return self

    def _invalidate_kernel(self) -> None:
        self.__dict__["_kernel"] = None
        self.__dict__["_frozen"] = None
        self.__dict__["_kernel_cache_key"] = None
        self.__dict__["_plan"] = None

    def kernel_unsupported(self) -> str | None:
        """Why this module's formats have no kernel (None when they have one)."""
        return f"{type(self).__name__} has no integer kernel wired; reference path"

    @property
    def kernel_path(self) -> str:
        """The path(s) forward runs on, e.g. ``"integer+dense"`` or ``"reference"``."""
        return self._kernel_info()[0]

    @property
    def kernel(self) -> str:
        """The kernel(s) forward runs, per row range."""
        return self._kernel_info()[1]

    @property
    def kernel_reason(self) -> str:
        """Why that kernel (or why the reference path)."""
        return self._kernel_info()[2]

    def _kernel_info(self) -> tuple[str, str, str]:
        ref = ("reference", f"dequantize + {self._reference_op} (reference)")
        if getattr(self, "requested_kernel_path", "reference") == "reference":
            return ref + ("kernel path 'reference' requested (bit-identical to fake-quant)",)
        why = self.kernel_unsupported()
        if why is not None:
            return ref + (why,)
        return self._kernel_fields()

    def _kernel_fields(self) -> tuple[str, str, str]:
        raise NotImplementedError

    _reference_op = "float op"

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
        self.requested_kernel_path = self.DEFAULT_KERNEL_PATH
        self._invalidate_kernel()
        self.weight_shape = tuple(int(n) for n in weight_shape)
        self.weight_dtype = dtype or torch.get_default_dtype()
        rows, cols = self.weight_shape[0], 1
        for n in self.weight_shape[1:]:
            cols *= n
        self.in_dim = cols
        self.block_size = weight_spec.granularity.block_size((rows, cols))
        qshape = n_blocks((rows, cols), self.block_size)  # a ragged last group counts
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
        self._invalidate_kernel()

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
        if (getattr(self, "requested_kernel_path", "reference") != "reference"
                and not (torch.is_grad_enabled() and x.requires_grad)
                and self.kernel_unsupported() is None):
            return self._forward_kernel(x)
        return self._forward_reference(x)

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized input, dequantized weight, float op (bit-identical to fake-quant)."""
        x_hat = x if self.act_quantizer is None else self.act_quantizer(x)
        return self._forward_float(x_hat, self.dequantized_weight())

    def _forward_kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _prepared(self):
        raise NotImplementedError

    def _load_from_state_dict(self, *args, **kwargs):
        self._invalidate_kernel()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        """``.to(dtype)``, ``.half()``, ``.cuda()``…: a float-dtype cast changes the dtype the
        layer computes in (``weight_dtype``, bias) but never its qparams, which stay in the
        precision they were chosen in (a bfloat16 scale would move every grid point)."""
        self._invalidate_kernel()
        owners = [self] + ([self.act_quantizer] if self.act_quantizer is not None else [])
        kept = [(o, n, getattr(o, n)) for o in owners for n in ("scale", "zero_point")
                if isinstance(getattr(o, n, None), torch.Tensor)]
        probe = fn(torch.empty(0, dtype=self.weight_dtype, device=self.qdata.device))
        out = super()._apply(fn, *args, **kwargs)
        if probe.is_floating_point():
            self.weight_dtype = probe.dtype
        for owner, name, before in kept:  # the original values, moved where fn moved them
            t = getattr(owner, name)
            if t.dtype != before.dtype:
                setattr(owner, name, before.to(t.device))
        return out

    def __getstate__(self):  # deepcopy/pickle: the cached kernel is rebuilt, not copied
        state = self.__dict__.copy()
        state["_kernel"] = state["_kernel_cache_key"] = state["_plan"] = None
        state["_frozen"] = None
        return state

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
