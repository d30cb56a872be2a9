"""Role flags (recipe_from_flags, migrate_flags) mapped onto recipes."""

from __future__ import annotations

import logging

import pytest

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.compat import migrate_flags, recipe_from_flags
from lowbit.recipe import ByRole, Recipe
from lowbit.types import (PerChannel, PerTensor, Scheme, int8, int16)

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
    with caplog.at_level(logging.INFO, logger="lowbit.compat.flags"):
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


def test_quant_backend_flags_name_fq_impls():
    from argparse import Namespace

    from lowbit.compat import QUANT_BACKENDS, fq_impl_of
    assert QUANT_BACKENDS == {"python": "reference", "cpp": "fused"}
    assert fq_impl_of(Namespace(quant_backend="cpp")) == "fused"


def test_set_kernel_backend_is_a_deprecated_alias_of_set_kernel_path():
    from torch import nn

    from lowbit.compat import set_kernel_backend
    from lowbit.nn import QuantizedLinear
    layer = QuantizedLinear.from_linear(nn.Linear(8, 4))
    with pytest.warns(DeprecationWarning, match="set_kernel_path"):
        set_kernel_backend(layer, "native")
    assert layer.requested_kernel_path == "integer"
