"""Complex activations: a quantization point and its fake-quant twin.

``ComplexPoint`` is a float identity module a model places where a complex tensor flows
(it checks the tensor is complex and returns it).  A recipe selects it like any layer, with an
activation-only ``LayerConfig(weight=None, act=spec)``; ``prepare`` swaps it for
``QuantComplexPoint``, whose :class:`ComplexQuantizer` fake-quantizes the real and the
imaginary part with two ordinary :class:`TensorQuantizer` s — two observers, two sets of
qparams (or, with a dynamic spec, two sets chosen from each input) — so a large imaginary part
never coarsens the real grid (the arithmetic of
:func:`lowbit.primitives.complex.fake_quantize_complex`).

``QuantComplexPoint`` has no weight, so ``convert`` keeps it as it is (fake-quant) and records
why; its qparams live in the state dict and in checkpoints like any quantizer's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import LayerConfig, QuantSpec
from ..errors import ConfigError, InputError
from ..primitives.complex import ComplexQParams
from .quantizer import TensorQuantizer


def _check_complex(z: torch.Tensor, owner: str) -> None:
    if not isinstance(z, torch.Tensor) or not z.is_complex():
        what = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
        raise InputError(f"{owner} takes a complex tensor (complex64 or complex128), got "
                         f"{what}; place it where the model's complex values flow")


class ComplexQuantizer(nn.Module):
    """Fake-quantizes a complex tensor: ``real`` and ``imag`` are TensorQuantizers of one spec.

    The life cycle is the TensorQuantizer's (``start_observing`` / ``freeze``), applied to
    both parts; :meth:`qparams` returns a :class:`ComplexQParams`.
    """

    def __init__(self, spec: QuantSpec, fq_impl: str = "reference"):
        super().__init__()
        self.real = TensorQuantizer(spec, fq_impl)
        self.imag = TensorQuantizer(spec, fq_impl)
        self.spec = spec
        self.fq_impl = fq_impl

    @property
    def fallback_reason(self) -> str | None:
        """Why the parts' quantizers fell back from ``fq_impl='fused'``, or None."""
        return self.real.fallback_reason

    @property
    def enabled(self) -> bool:
        return self.real.enabled and self.imag.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.real.enabled = self.imag.enabled = bool(value)

    @property
    def observing(self) -> bool:
        return self.real.observing

    @property
    def is_frozen(self) -> bool:
        return self.real.is_frozen and self.imag.is_frozen

    @property
    def state(self) -> str:
        """The parts' state (``observing``, ``frozen``, ``uncalibrated``...)."""
        return self.real.state

    def start_observing(self, reset: bool = False) -> "ComplexQuantizer":
        """Both parts observe their inputs (accumulating unless ``reset``)."""
        self.real.start_observing(reset)
        self.imag.start_observing(reset)
        return self

    def freeze(self) -> "ComplexQuantizer":
        """Both parts hold their observers' qparams (StateError if nothing was observed)."""
        self.real.freeze()
        self.imag.freeze()
        return self

    def qparams(self, z: torch.Tensor | None = None) -> ComplexQParams:
        """The held qparams of both parts (a dynamic spec: those chosen for ``z``)."""
        if z is None:
            return ComplexQParams(real=self.real.qparams(), imag=self.imag.qparams())
        _check_complex(z, "ComplexQuantizer.qparams")
        return ComplexQParams(real=self.real.qparams(z.real), imag=self.imag.qparams(z.imag))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Observe or fake-quantize ``z.real`` and ``z.imag`` separately; complex out."""
        _check_complex(z, "ComplexQuantizer")
        return torch.complex(self.real(z.real), self.imag(z.imag))

    def summary(self) -> dict:
        """Both parts' summaries, plus the larger saturation ratio and observer as ``observer``."""
        real, imag = self.real.summary(), self.imag.summary()
        ratios = [s["sat_ratio"] for s in (real, imag) if s["sat_ratio"] is not None]
        observer = None
        if real["observer"] is not None:
            observer = dict(real["observer"])
            observer["sat_ratio"] = max(ratios) if ratios else None
        return {"spec": self.spec.to_dict(), "fq_impl": self.fq_impl, "state": self.state,
                "enabled": self.enabled, "real": real, "imag": imag, "observer": observer,
                "sat_ratio": max(ratios) if ratios else None}


class ComplexPoint(nn.Module):
    """Identity on a complex tensor: the place where a recipe may quantize it."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_complex(z, "ComplexPoint")
        return z


class QuantComplexPoint(ComplexPoint):
    """Fake-quant twin of :class:`ComplexPoint`: ``act_quantizer`` is a ComplexQuantizer.

    It offers the QAT-module interface ``prepare``/``calibrate``/``convert`` use
    (``config``, ``weight_quantizer`` (None), ``act_quantizer``, ``start_observing``,
    ``freeze``, ``set_fake_quant``, ``summary``, ``from_float``/``to_float``).
    """

    def __init__(self, config: LayerConfig, fq_impl: str = "reference"):
        super().__init__()
        if not isinstance(config, LayerConfig) or config.act is None or config.weight is not None:
            raise ConfigError("config", config, "LayerConfig(weight=None, act=QuantSpec(...))",
                              fix="a ComplexPoint has no weight; quantize only its activation")
        self.config = config
        self.fq_impl = fq_impl
        self.weight_quantizer = None
        self.act_quantizer = ComplexQuantizer(config.act, fq_impl)

    @classmethod
    def from_float(cls, module: ComplexPoint, config: LayerConfig,
                   fq_impl: str = "reference") -> "QuantComplexPoint":
        """The fake-quant twin of ``module`` (which holds no tensors)."""
        if type(module) is not ComplexPoint:
            raise ConfigError("module", type(module).__name__, "a float ComplexPoint",
                              fix="pass the float module; to_float() undoes from_float")
        return cls(config, fq_impl).train(module.training)

    def to_float(self) -> ComplexPoint:
        """A plain :class:`ComplexPoint`."""
        return ComplexPoint().train(self.training)

    @property
    def fallback_reason(self) -> str | None:
        reason = self.act_quantizer.fallback_reason
        return f"act: {reason}" if reason else None

    def quantizers(self) -> list[ComplexQuantizer]:
        """The quantizers present (only the activation's)."""
        return [self.act_quantizer]

    def start_observing(self) -> "QuantComplexPoint":
        """Begin calibration: both parts' observers restart."""
        self.act_quantizer.start_observing(reset=True)
        return self

    def freeze(self) -> "QuantComplexPoint":
        """End calibration: both parts hold their qparams."""
        if self.act_quantizer.observing or not self.act_quantizer.is_frozen:
            self.act_quantizer.freeze()
        return self

    def set_fake_quant(self, enabled: bool = True) -> "QuantComplexPoint":
        """Turn fake quantization on or off (off: identity)."""
        self.act_quantizer.enabled = bool(enabled)
        return self

    def summary(self) -> dict:
        return {"module_type": type(self).__name__, "fq_impl": self.fq_impl,
                "fallback_reason": self.fallback_reason, "weight": None,
                "act": self.act_quantizer.summary()}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_complex(z, "QuantComplexPoint")
        return self.act_quantizer(z)
