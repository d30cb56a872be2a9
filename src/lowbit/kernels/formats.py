"""``ActFormat``: how a linear layer's input is quantized, as the kernels see it.

A layer's :class:`~lowbit.config.QuantSpec` is lowered to this small typed description once
(:meth:`ActFormat.from_spec`); the registry's ``supports(weight, act)`` functions read it to
decide whether a kernel can run the layer, and nothing else checks formats.  The weight's own
format travels in :class:`~lowbit.kernels.weights.QuantWeight` (qtype, block, symmetric).

``qtype``, ``scheme``  the input's grid and scheme;
``per_token``          one ``(scale, zero)`` per row of ``[M, K]``, else one for the tensor;
``static``             qparams calibrated once (the layer holds them), else computed from
                       every input at run time.

The kernels' run-time activation quantizer (:class:`~lowbit.kernels.act.ActQuantizer`) is
int8 AFFINE; :attr:`ActFormat.mode` names its mode for formats it computes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import QuantSpec
from ..errors import ConfigError
from ..types import PerTensor, PerToken, QType, Scheme, int8


@dataclass(frozen=True)
class ActFormat:
    """The input format of a linear layer (see the module docstring)."""

    qtype: QType
    scheme: Scheme
    per_token: bool
    static: bool

    @classmethod
    def from_spec(cls, spec: QuantSpec) -> "ActFormat":
        """The format a layer's activation spec describes (any granularity that is not per
        token counts as per tensor only when it is :class:`PerTensor`; others have no
        kernel and are described with ``per_token=False``, ``static`` from the spec)."""
        granularity = spec.granularity
        return cls(spec.qtype, spec.scheme, isinstance(granularity, PerToken),
                   not spec.dynamic) if isinstance(granularity, (PerToken, PerTensor)) else \
            _Unsupported(spec.qtype, spec.scheme, False, not spec.dynamic,
                         type(granularity).__name__)

    @classmethod
    def from_mode(cls, mode: "str | ActFormat | None") -> "ActFormat | None":
        """The format of a kernel act mode (``"dynamic_int8"``: int8 AFFINE per token,
        computed per input; ``"dynamic_int8_tensor"``: per tensor); formats pass through."""
        if mode is None or isinstance(mode, ActFormat):
            return mode
        if mode not in _MODES:
            raise ConfigError("act", mode, f"None, an ActFormat or one of {tuple(_MODES)}",
                              fix="act=None keeps the input float (weight-only); "
                                  "'dynamic_int8' quantizes each row (token) at run time, "
                                  "'dynamic_int8_tensor' the whole input with one scale")
        return _MODES[mode]

    @property
    def granularity_name(self) -> str:
        return "PerToken" if self.per_token else "PerTensor"

    @property
    def mode(self) -> str | None:
        """The :data:`~lowbit.kernels.act.ACT_MODES` key whose int8 AFFINE quantizer computes
        this format exactly (static formats use it with their fixed qparams), or None."""
        if self.qtype != int8:
            return None
        if self.static:  # fixed qparams: symmetric ones are affine ones with zero point 0
            return None if self.per_token else "dynamic_int8_tensor"
        if self.scheme is not Scheme.AFFINE:
            return None
        return "dynamic_int8" if self.per_token else "dynamic_int8_tensor"

    def describe(self) -> str:
        kind = "static" if self.static else "dynamic"
        return f"{kind} {self.qtype.name} {self.scheme.value} {self.granularity_name}"


@dataclass(frozen=True)
class _Unsupported(ActFormat):
    """A granularity no kernel quantizes activations with (kept for the reason's wording)."""

    granularity: str = "?"

    @property
    def granularity_name(self) -> str:
        return self.granularity

    @property
    def mode(self) -> str | None:
        return None


_MODES = {
    "dynamic_int8": ActFormat(int8, Scheme.AFFINE, per_token=True, static=False),
    "dynamic_int8_tensor": ActFormat(int8, Scheme.AFFINE, per_token=False, static=False),
}


def act_kernel_reason(act: ActFormat | None) -> str | None:
    """Why the int8 kernels cannot quantize ``act`` (None when they can, or no act)."""
    if act is None or act.mode is not None:
        return None
    return (f"input {act.describe()}: the integer kernels take int8 activations, dynamic "
            "AFFINE per token or per tensor, or static per tensor")
