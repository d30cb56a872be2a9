"""QuantizationConfig modes mapped onto recipes."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.compat import QuantizationConfig
from lowbit.recipe import Recipe
from lowbit.types import (PerChannel, PerGroup, PerTensor, Scheme, int4, int8)



def _config_for(recipe: Recipe, module: nn.Module) -> LayerConfig | None:
    found = recipe.match("layer", module, None)
    assert found is not None, f"{recipe.name} must select a {type(module).__name__}"
    return found[1]


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
