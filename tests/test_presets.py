"""Presets, seed 002's QuantizationConfig and seed 000's role flags, mapped onto recipes."""

from __future__ import annotations


import pytest
import torch
from lowbit.types import QType
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.presets import PRESETS, describe_presets, preset
from lowbit.primitives.affine import choose_qparams
from lowbit.recipe import ByType, Recipe
from lowbit.types import (PerChannel, PerGroup, PerTensor, PerToken, Scheme, int4, int8, int16)

W8 = QuantSpec(int8, Scheme.SYMMETRIC, PerChannel(0), method="minmax")
A8_DYN = QuantSpec(int8, Scheme.AFFINE, PerToken(), dynamic=True)


def _config_for(recipe: Recipe, module: nn.Module) -> LayerConfig | None:
    found = recipe.match("layer", module, None)
    assert found is not None, f"{recipe.name} must select a {type(module).__name__}"
    return found[1]


# ---------------------------------------------------------------------------- presets


def test_describe_presets_lists_every_preset_once():
    described = describe_presets()
    assert [name for name, _ in described] == list(PRESETS)
    assert set(PRESETS) == {"w8a8", "w8a8-static", "w8a16", "w4a16-g128", "w4a8",
                            "int16-fixed88", "int16", "w4a16-g64", "w3a16-g64"}
    for name, text in described:
        assert text and "\n" not in text, f"{name}: a one-line description"
        assert PRESETS[name].name == name and preset(name) is PRESETS[name]


def test_preset_unknown_name_lists_presets():
    with pytest.raises(ConfigError, match=r"preset='w3a3'.*w8a8, w8a8-static.*int16"):
        preset("w3a3")


@pytest.mark.parametrize("module", [nn.Linear(4, 4), nn.Conv1d(2, 2, 1), nn.Conv2d(2, 2, 1)])
def test_w8a8_linear_conv(module):
    assert _config_for(PRESETS["w8a8"], module) == LayerConfig(W8, A8_DYN)


def test_w8a8_embedding_is_weight_only():
    assert _config_for(PRESETS["w8a8"], nn.Embedding(5, 4)) == LayerConfig(W8, None)
    assert PRESETS["w8a8"].match("n", nn.LayerNorm(4)) is None, "norms are not selected"


def test_w8a8_static_and_w8a16():
    static = _config_for(PRESETS["w8a8-static"], nn.Conv2d(2, 2, 3))
    assert static.weight == W8
    assert static.act == QuantSpec(int8, Scheme.AFFINE, PerTensor(), method="minmax")
    assert not static.act.dynamic, "static activations are calibrated"
    assert _config_for(PRESETS["w8a16"], nn.Linear(2, 2)) == LayerConfig(W8, None)


def test_w4_presets_group_along_input_dimension():
    w4a16 = _config_for(PRESETS["w4a16-g128"], nn.Linear(256, 8))
    assert w4a16 == LayerConfig(QuantSpec(int4, Scheme.AFFINE, PerGroup(128, axis=1)), None)
    # a Linear weight is [out=8, in=256]: groups of 128 consecutive inputs per output row
    assert w4a16.weight.granularity.block_size((8, 256)) == (1, 128)
    w4a8 = _config_for(PRESETS["w4a8"], nn.Linear(256, 8))
    assert w4a8 == LayerConfig(QuantSpec(int4, Scheme.SYMMETRIC, PerGroup(128, axis=1)), A8_DYN)
    for name, bits in (("w4a16-g64", 4), ("w3a16-g64", 3)):
        config = _config_for(PRESETS[name], nn.Linear(576, 8))
        assert config == LayerConfig(QuantSpec(QType(bits), Scheme.AFFINE, PerGroup(64, 1)), None)


def test_int16_fixed88_has_scale_one_over_256():
    cfg = _config_for(PRESETS["int16-fixed88"], nn.Linear(2, 2))
    for spec in (cfg.weight, cfg.act):
        assert spec.qtype == int16 and spec.scheme is Scheme.FIXED_POINT and spec.frac_bits == 8
        torch.manual_seed(0)
        qp = choose_qparams(torch.randn(3, 4) * 50, spec.qtype, spec.scheme, spec.granularity,
                            frac_bits=spec.frac_bits)
        assert torch.equal(qp.scale, torch.full_like(qp.scale, 1 / 256)), "Q8.8 scale is 2^-8"


def test_int16_preset():
    cfg = _config_for(PRESETS["int16"], nn.Conv1d(2, 2, 1))
    assert cfg.weight == QuantSpec(int16, Scheme.SYMMETRIC, PerChannel(0))
    assert cfg.act == QuantSpec(int16, Scheme.SYMMETRIC, PerTensor())
    assert not cfg.act.dynamic

def test_presets_select_linear_conv_by_type():
    for name, recipe in PRESETS.items():
        assert isinstance(recipe.rules[0].selector, ByType), name
        assert recipe.rules[0].selector.types == ("Linear", "Conv1d", "Conv2d"), name
