"""Named recipes.

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

Other tools' configurations (``QuantizationConfig`` modes, role flags) map onto recipes in
:mod:`lowbit.compat`.
"""

from __future__ import annotations


from .config import LayerConfig, QuantSpec
from .errors import ConfigError
from .recipe import ByType, Recipe, Rule, register_named_recipe
from .types import (PerChannel, PerGroup, PerTensor, PerToken, QType, Scheme, int3, int4, int8,
                    int16)


#: Layer types every preset quantizes with weights and activations.
LINEAR_CONV = ("Linear", "Conv1d", "Conv2d")

# ---------------------------------------------------------------------------- building blocks


def _weight(qtype: QType, scheme: Scheme = Scheme.SYMMETRIC, granularity=None) -> QuantSpec:
    return QuantSpec(qtype=qtype, scheme=scheme, granularity=granularity or PerChannel(0),
                     method="minmax")


_W8 = _weight(int8)
_A8_DYNAMIC = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerToken(), dynamic=True)
_A8_STATIC = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor(), method="minmax")
Q88 = QuantSpec(qtype=int16, scheme=Scheme.FIXED_POINT, granularity=PerTensor(), frac_bits=8)


def linear_conv_recipe(name: str, config: LayerConfig,
                       embedding: LayerConfig | None = None) -> Recipe:
    """A recipe giving Linear/Conv layers ``config`` (and Embeddings ``embedding``)."""
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
    "w8a8": linear_conv_recipe("w8a8", LayerConfig(_W8, _A8_DYNAMIC), LayerConfig(_W8, None)),
    "w8a8-static": linear_conv_recipe("w8a8-static", LayerConfig(_W8, _A8_STATIC),
                                LayerConfig(_W8, None)),
    "w8a16": linear_conv_recipe("w8a16", LayerConfig(_W8, None), LayerConfig(_W8, None)),
    "w4a16-g128": linear_conv_recipe("w4a16-g128", LayerConfig(
        _weight(int4, Scheme.AFFINE, PerGroup(128, axis=1)), None), LayerConfig(_W8, None)),
    "w4a8": linear_conv_recipe("w4a8", LayerConfig(
        _weight(int4, Scheme.SYMMETRIC, PerGroup(128, axis=1)), _A8_DYNAMIC),
        LayerConfig(_W8, None)),
    "int16-fixed88": linear_conv_recipe("int16-fixed88", LayerConfig(Q88, Q88)),
    "int16": linear_conv_recipe("int16", LayerConfig(
        _weight(int16), QuantSpec(qtype=int16, scheme=Scheme.SYMMETRIC, granularity=PerTensor()))),
    "w4a16-g64": linear_conv_recipe("w4a16-g64", LayerConfig(
        _weight(int4, Scheme.AFFINE, PerGroup(64, axis=1)), None), LayerConfig(_W8, None)),
    "w3a16-g64": linear_conv_recipe("w3a16-g64", LayerConfig(
        _weight(int3, Scheme.AFFINE, PerGroup(64, axis=1)), None), LayerConfig(_W8, None)),
}
assert set(PRESETS) == set(_DESCRIPTIONS)
for _name, _recipe in PRESETS.items():
    register_named_recipe(_name, _recipe)


def preset(name: str) -> Recipe:
    """The preset recipe called ``name`` (see :data:`PRESETS`)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError("preset", name, f"one of {', '.join(PRESETS)}",
                          fix="pick a preset from lowbit.presets.describe_presets()")
    return PRESETS[name]


def describe_presets() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every preset, in a stable order."""
    return [(name, _DESCRIPTIONS[name]) for name in PRESETS]
