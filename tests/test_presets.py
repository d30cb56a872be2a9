"""Presets, seed 002's QuantizationConfig and seed 000's role flags, mapped onto recipes."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from lowbit.types import QType
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.presets import (PRESETS, QuantizationConfig, describe_presets, migrate_flags, preset,
                            recipe_from_flags)
from lowbit.primitives.affine import choose_qparams
from lowbit.recipe import ByRole, ByType, Recipe
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

# ---------------------------------------------------------------------------- QuantizationConfig


def test_quantization_config_int8_modes():
    qc = QuantizationConfig()
    assert (qc.mode, qc.group_size, qc.per_channel, qc.symmetric) == ("ptq_int8", 128, True, True)
    assert qc.bits == 8 and not qc.qat
    cfg = _config_for(qc.to_recipe(), nn.Linear(4, 4))
    assert cfg.weight == QuantSpec(int8, Scheme.SYMMETRIC, PerChannel(0))
    assert cfg.act == QuantSpec(int8, Scheme.SYMMETRIC, PerTensor())
    per_tensor = _config_for(QuantizationConfig(per_channel=False, symmetric=False).to_recipe(),
                             nn.Linear(4, 4))
    assert per_tensor.weight.granularity == PerTensor()
    assert per_tensor.weight.scheme is Scheme.AFFINE and per_tensor.act.scheme is Scheme.AFFINE


def test_quantization_config_int4_groups_and_qat_same_grid():
    ptq = QuantizationConfig(mode="ptq_int4", group_size=64)
    qat = QuantizationConfig(mode="qat_int4", group_size=64)
    assert ptq.bits == qat.bits == 4 and qat.qat and not ptq.qat
    weight = _config_for(ptq.to_recipe(), nn.Linear(128, 4)).weight
    assert weight.qtype == int4 and weight.granularity == PerGroup(64, axis=1)
    assert not weight.learnable
    assert qat.to_recipe().rules == ptq.to_recipe().rules, "QAT trains through the same grid"
    assert QuantizationConfig(mode="qat_int8").qat and QuantizationConfig(mode="qat_int8").bits == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        ptq.mode = "ptq_int8"


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "ptq_int2"}, r"QuantizationConfig\.mode='ptq_int2'.*'ptq_int8', 'qat_int8'"),
    ({"group_size": 0}, r"QuantizationConfig\.group_size=0"),
    ({"per_channel": 1}, r"QuantizationConfig\.per_channel=1.*True or False"),
    ({"symmetric": "yes"}, r"QuantizationConfig\.symmetric='yes'"),
])
def test_quantization_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        QuantizationConfig(**kwargs)

# ---------------------------------------------------------------------------- role flags


def _by_role(recipe: Recipe) -> dict[str, LayerConfig | None]:
    assert all(isinstance(rule.selector, ByRole) for rule in recipe.rules)
    return {rule.selector.role: rule.config for rule in recipe.rules}


def test_flags_select_roles_and_keep_the_rest_float():
    roles = _by_role(recipe_from_flags(q_head=True))
    assert roles["proj"] is None and roles["block"] is None, "unselected roles stay float"
    head = roles["head"]
    assert head.weight == QuantSpec(int8, Scheme.SYMMETRIC, PerChannel(0), method="minmax")
    assert head.act == QuantSpec(int8, Scheme.SYMMETRIC, PerTensor(), method="minmax"), \
        "maxabs is lowbit's minmax; activations are per-tensor symmetric, calibrated"
    both = _by_role(recipe_from_flags(q_proj=True, q_block_linear=True))
    assert both["proj"] is not None and both["block"] is not None and both["head"] is None
    everything = _by_role(recipe_from_flags(quantize_all=True))
    assert all(cfg is not None for cfg in everything.values())


def test_flags_bits_and_calibration_method():
    roles = _by_role(recipe_from_flags(q_proj=True, quant_bits=16, calib_method="p99"))
    assert roles["proj"].weight.qtype == int16 and roles["proj"].act.qtype == int16
    assert roles["proj"].act.method == "percentile:99"


def test_fixed88_forces_16_bits(caplog):
    with caplog.at_level(logging.INFO, logger="lowbit.presets"):
        roles = _by_role(recipe_from_flags(quantize_all=True, quant_mode="fixed88", quant_bits=8))
    for spec in (roles["head"].weight, roles["head"].act):
        assert spec.qtype == int16 and spec.scheme is Scheme.FIXED_POINT and spec.frac_bits == 8
    assert "forces 16 bits" in caplog.text, "overriding quant_bits=8 must be logged"
    assert recipe_from_flags(q_head=True, quant_mode="fixed88", quant_bits=16).rules == \
        recipe_from_flags(q_head=True, quant_mode="fixed88").rules


@pytest.mark.parametrize("kwargs, match", [
    ({}, r"q_proj/q_head/q_block_linear/quantize_all=False.*--q_proj, --q_head, "
         r"--q_block_linear or --quantize_all"),
    ({"q_proj": True, "quant_mode": "static"}, r"quant_mode='static'.*'dynamic', 'fixed88'"),
    ({"q_proj": True, "quant_bits": 32}, r"quant_bits=32.*\[2, 16\]"),
    ({"q_proj": True, "calib_method": "mean"}, r"calib_method='mean'"),
    ({"q_proj": "yes"}, r"q_proj='yes'.*True or False"),
])
def test_flag_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        recipe_from_flags(**kwargs)


def test_migrate_old_q_proj_head_flag():
    assert migrate_flags({"q_proj_head": True, "quant_bits": 8}) == \
        {"q_proj": True, "q_head": True, "quant_bits": 8}
    assert migrate_flags({"q_proj_head": True, "q_head": False}) == \
        {"q_proj": True, "q_head": False}, "an explicit new flag wins over the old one"
    assert migrate_flags({"q_proj": True}) == {"q_proj": True}
    with pytest.raises(ConfigError, match=r"q_proj_head='1'"):
        migrate_flags({"q_proj_head": "1"})


def test_presets_select_linear_conv_by_type():
    for name, recipe in PRESETS.items():
        assert isinstance(recipe.rules[0].selector, ByType), name
        assert recipe.rules[0].selector.types == ("Linear", "Conv1d", "Conv2d"), name
