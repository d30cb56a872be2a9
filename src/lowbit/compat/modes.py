"""``QuantizationConfig``: the ``ptq_int8`` / ``qat_int8`` / ``ptq_int4`` / ``qat_int4`` modes
of other PTQ/QAT tools, mapped onto a lowbit :class:`~lowbit.recipe.Recipe`."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import LayerConfig, QuantSpec
from ..errors import ConfigError, check_choice, check_int_range
from ..presets import linear_conv_recipe
from ..recipe import Recipe
from ..types import PerChannel, PerGroup, PerTensor, QType, Scheme, int8

QC_MODES = ("ptq_int8", "qat_int8", "ptq_int4", "qat_int4")


@dataclass(frozen=True)
class QuantizationConfig:
    """``mode`` / ``group_size`` / ``per_channel`` / ``symmetric`` configuration of PTQ/QAT tools.

    ``ptq_*`` calibrate and round; ``qat_*`` train through the same grid afterwards
    (:attr:`qat`). int8 modes quantize weights per channel (or per tensor when
    ``per_channel=False``); int4 modes quantize weights in groups of ``group_size`` input
    features. Activations are int8 per tensor, calibrated (int4 activations per tensor lose
    too much; the int4 modes' groups apply to weights). ``symmetric`` picks SYMMETRIC or AFFINE.
    """

    mode: str = "ptq_int8"
    group_size: int = 128
    per_channel: bool = True
    symmetric: bool = True

    def __post_init__(self):
        check_choice("QuantizationConfig.mode", self.mode, QC_MODES)
        check_int_range("QuantizationConfig.group_size", self.group_size, 1, 1 << 20,
                        fix="use a positive group size that divides the input features, e.g. 128")
        for name in ("per_channel", "symmetric"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"QuantizationConfig.{name}", getattr(self, name),
                                  "True or False", fix=f"pass {name}=True or {name}=False")

    @property
    def bits(self) -> int:
        """Weight bits: 8 or 4."""
        return int(self.mode[-1])

    @property
    def qat(self) -> bool:
        """True for ``qat_*`` modes: the recipe's grid is then trained through."""
        return self.mode.startswith("qat")

    def to_recipe(self) -> Recipe:
        """The equivalent Recipe for Linear/Conv layers (the same grid for PTQ and QAT)."""
        scheme = Scheme.SYMMETRIC if self.symmetric else Scheme.AFFINE
        if self.bits == 4:
            granularity = PerGroup(self.group_size, axis=1)
        else:
            granularity = PerChannel(0) if self.per_channel else PerTensor()
        weight = QuantSpec(qtype=QType(self.bits), scheme=scheme, granularity=granularity,
                           learnable=False)
        act = QuantSpec(qtype=int8, scheme=scheme, granularity=PerTensor(), method="minmax")
        return linear_conv_recipe(f"qc:{self.mode}", LayerConfig(weight, act))
