"""Named recipes, and the configurations of other tools mapped onto recipes.

Presets (``PRESETS``, :func:`preset`, :func:`describe_presets`):

========================  ===================================================================
``w8a8``                  Linear/Conv: int8 symmetric per-channel weights, int8 affine
                          per-token dynamic activations; Embedding: int8 weight-only
``w8a8-static``           weights as ``w8a8``; int8 affine per-tensor calibrated activations
``w8a16``                 int8 symmetric per-channel weights only (Linear/Conv/Embedding)
``w4a16-g128``            int4 affine weights in groups of 128 input features, weights only
``w4a8``                  int4 symmetric grouped weights, int8 affine per-token dynamic acts
``int16-fixed88``         Q8.8: int16 fixed point with 8 fractional bits (scale 1/256)
``int16``                 int16 symmetric per-channel weights, per-tensor calibrated acts
``w4a16-g64``             int4 affine weights in groups of 64 input features, weights only
``w3a16-g64``             int3 affine weights in groups of 64 input features, weights only
========================  ===================================================================

Compatibility with other tools' configurations:

* :class:`QuantizationConfig` — modes ``ptq_int8``/``qat_int8``/``ptq_int4``/``qat_int4``
  with ``group_size``, ``per_channel`` and ``symmetric``.
* :func:`recipe_from_flags` — the ``--q_proj``/``--q_head``/``--q_block_linear``/
  ``--quantize_all``/``--quant_bits``/``--quant_mode``/``--calib_method`` switches, which
  select layers by role; :func:`migrate_flags` maps the older ``q_proj_head`` flag.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from .config import LayerConfig, QuantSpec, parse_method
from .errors import ConfigError, check_choice, check_int_range
from .recipe import ByRole, ByType, Recipe, Rule
from .types import (PerChannel, PerGroup, PerTensor, PerToken, QType, Scheme, int3, int4, int8,
                    int16)

logger = logging.getLogger(__name__)

#: Layer types every preset quantizes with weights and activations.
LINEAR_CONV = ("Linear", "Conv1d", "Conv2d")

# ---------------------------------------------------------------------------- building blocks


def _weight(qtype: QType, scheme: Scheme = Scheme.SYMMETRIC, granularity=None) -> QuantSpec:
    return QuantSpec(qtype=qtype, scheme=scheme, granularity=granularity or PerChannel(0),
                     method="minmax")


_W8 = _weight(int8)
_A8_DYNAMIC = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerToken(), dynamic=True)
_A8_STATIC = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor(), method="minmax")
_Q88 = QuantSpec(qtype=int16, scheme=Scheme.FIXED_POINT, granularity=PerTensor(), frac_bits=8)


def _linear_conv(name: str, config: LayerConfig, embedding: LayerConfig | None = None) -> Recipe:
    rules = [Rule(ByType(LINEAR_CONV), config)]
    if embedding is not None:
        rules.append(Rule(ByType(("Embedding",)), embedding))
    return Recipe(tuple(rules), name)


_DESCRIPTIONS = {
    "w8a8": "int8 per-channel symmetric weights + int8 per-token dynamic activations "
            "(LLMs, transformers); Embedding weight-only int8",
    "w8a8-static": "int8 per-channel weights + int8 per-tensor calibrated activations "
                   "(CNNs, static graphs)",
    "w8a16": "int8 per-channel symmetric weights only; activations stay float",
    "w4a16-g128": "int4 affine weights in groups of 128 input features; activations stay "
                  "float; Embedding weight-only int8",
    "w4a8": "int4 symmetric weights in groups of 128 + int8 per-token dynamic activations; "
            "Embedding weight-only int8",
    "int16-fixed88": "Q8.8 fixed point: int16 with scale 1/256 for weights and activations",
    "int16": "int16 per-channel symmetric weights + int16 per-tensor calibrated activations",
    "w4a16-g64": "int4 affine weights in groups of 64 input features (LLMs; pair with GPTQ); "
                 "activations stay float; Embedding weight-only int8",
    "w3a16-g64": "int3 affine weights in groups of 64 input features (pair with GPTQ); "
                 "activations stay float; Embedding weight-only int8",
}

PRESETS: dict[str, Recipe] = {
    "w8a8": _linear_conv("w8a8", LayerConfig(_W8, _A8_DYNAMIC), LayerConfig(_W8, None)),
    "w8a8-static": _linear_conv("w8a8-static", LayerConfig(_W8, _A8_STATIC),
                                LayerConfig(_W8, None)),
    "w8a16": _linear_conv("w8a16", LayerConfig(_W8, None), LayerConfig(_W8, None)),
    "w4a16-g128": _linear_conv("w4a16-g128", LayerConfig(
        _weight(int4, Scheme.AFFINE, PerGroup(128, axis=1)), None), LayerConfig(_W8, None)),
    "w4a8": _linear_conv("w4a8", LayerConfig(
        _weight(int4, Scheme.SYMMETRIC, PerGroup(128, axis=1)), _A8_DYNAMIC),
        LayerConfig(_W8, None)),
    "int16-fixed88": _linear_conv("int16-fixed88", LayerConfig(_Q88, _Q88)),
    "int16": _linear_conv("int16", LayerConfig(
        _weight(int16), QuantSpec(qtype=int16, scheme=Scheme.SYMMETRIC, granularity=PerTensor()))),
    "w4a16-g64": _linear_conv("w4a16-g64", LayerConfig(
        _weight(int4, Scheme.AFFINE, PerGroup(64, axis=1)), None), LayerConfig(_W8, None)),
    "w3a16-g64": _linear_conv("w3a16-g64", LayerConfig(
        _weight(int3, Scheme.AFFINE, PerGroup(64, axis=1)), None), LayerConfig(_W8, None)),
}
assert set(PRESETS) == set(_DESCRIPTIONS)


def preset(name: str) -> Recipe:
    """The preset recipe called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError("preset", name, f"one of {', '.join(PRESETS)}",
                          fix="pick a preset from lowbit.presets.describe_presets()")
    return PRESETS[name]


def describe_presets() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every preset, in a stable order."""
    return [(name, _DESCRIPTIONS[name]) for name in PRESETS]

# ---------------------------------------------------------------------------- QuantizationConfig


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
        return _linear_conv(f"qc:{self.mode}", LayerConfig(weight, act))

# ---------------------------------------------------------------------------- role flags


QUANT_MODES = ("dynamic", "fixed88")
_ROLE_FLAGS = (("proj", "q_proj"), ("head", "q_head"), ("block", "q_block_linear"))


def recipe_from_flags(*, q_proj: bool = False, q_head: bool = False,
                      q_block_linear: bool = False, quantize_all: bool = False,
                      quant_bits: int = 8, quant_mode: str = "dynamic",
                      calib_method: str = "maxabs") -> Recipe:
    """A role-based Recipe from the ``--q_*`` switches.

    ``q_proj``/``q_head``/``q_block_linear`` select the input projection, the output head and
    the other Linear/Conv layers (roles from ``lowbit.model.select.find_roles``);
    ``quantize_all`` selects all three. Unselected roles stay float (a rule with ``None``).

    ``quant_mode='dynamic'``: calibrated ("dynamic scale") per-tensor symmetric activations
    using ``calib_method`` (``maxabs``, ``p99``, ...) and per-channel symmetric max-abs
    weights, both on ``quant_bits``. ``quant_mode='fixed88'``: Q8.8, int16 with a fixed scale
    1/256 for weights and activations; fixed88 forces 16 bits, so ``quant_bits`` is ignored.
    """
    flags = {"q_proj": q_proj, "q_head": q_head, "q_block_linear": q_block_linear,
             "quantize_all": quantize_all}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(name, value, "True or False", fix=f"pass {name}=True or False")
    check_int_range("quant_bits", quant_bits, 2, 16, fix="e.g. quant_bits=8 or quant_bits=16")
    check_choice("quant_mode", quant_mode, QUANT_MODES)
    try:
        parse_method(calib_method)
    except ConfigError as exc:
        raise ConfigError("calib_method", calib_method, exc.allowed, exc.fix) from None

    if quant_mode == "fixed88":
        if quant_bits != 16:
            logger.info("quant_mode='fixed88' forces 16 bits; quant_bits=%d is ignored", quant_bits)
        config = LayerConfig(_Q88, _Q88)
        label = "fixed88"
    else:
        qtype = QType(quant_bits)
        config = LayerConfig(
            weight=QuantSpec(qtype=qtype, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0),
                             method="minmax"),
            act=QuantSpec(qtype=qtype, scheme=Scheme.SYMMETRIC, granularity=PerTensor(),
                          method=calib_method))
        label = f"int{quant_bits}-{config.act.method}"

    chosen = [role for role, flag in _ROLE_FLAGS if quantize_all or flags[flag]]
    if not chosen:
        raise ConfigError("q_proj/q_head/q_block_linear/quantize_all", False,
                          "at least one of them True",
                          fix="pass --q_proj, --q_head, --q_block_linear or --quantize_all "
                              "to choose which layers to quantize")
    rules = tuple(Rule(ByRole(role), config if role in chosen else None) for role, _ in _ROLE_FLAGS)
    return Recipe(rules, f"flags:{'+'.join(chosen)}:{label}")


def migrate_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Map older flag sets onto the current ones: ``q_proj_head`` becomes ``q_proj`` and
    ``q_head`` (an explicit new flag wins over the old one). Returns a new dict."""
    out = dict(flags)
    if "q_proj_head" in out:
        old = out.pop("q_proj_head")
        if not isinstance(old, bool):
            raise ConfigError("q_proj_head", old, "True or False",
                              fix="old checkpoints store q_proj_head as a bool")
        out.setdefault("q_proj", old)
        out.setdefault("q_head", old)
    return out
