"""Layer roles by execution order, and selection of layers by recipe with a record for each."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from lowbit.config import LayerConfig, QuantSpec, weight_spec
from lowbit.errors import ConfigError, InputError
from lowbit.model.select import (QUANTIZABLE, RoleMap, find_roles, is_quantizable,
                                 select_layers)
from lowbit.compat import recipe_from_flags
from lowbit.presets import PRESETS
from lowbit.recipe import AnyModule, ByName, ByType, Recipe, Rule
from lowbit.types import PerChannel, PerGroup, Scheme, int4, int8

CFG = LayerConfig(weight=weight_spec(int8), act=QuantSpec(int8, Scheme.SYMMETRIC))


class Reordered(nn.Module):
    """Registered head, blocks, proj — but executed proj -> blocks -> head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.unused = nn.Linear(8, 8)
        self.proj = nn.Linear(4, 8)

    def forward(self, x):
        return self.head(self.blocks(self.proj(x)))


class Block(nn.Module):
    """Depthwise 3x3 -> pointwise 1x1 -> grouped 1x1, with BatchNorm."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.pw = nn.Conv2d(c, c, 1)
        self.grouped = nn.Conv2d(c, c, 1, groups=2)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn(self.grouped(torch.relu(self.pw(self.dw(x)))))


class TinyCNN(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def _records(records):
    return {r.name: r for r in records}

# ---------------------------------------------------------------------------- roles


def test_roles_follow_execution_not_registration():
    torch.manual_seed(0)
    model = Reordered()
    roles = find_roles(model, (torch.randn(2, 4),))
    assert roles.source == "execution"
    assert roles.order == ["proj", "blocks.0", "blocks.2", "head"], "order of the forward"
    assert roles.roles == {"head": "head", "blocks.0": "block", "blocks.2": "block",
                           "unused": None, "proj": "proj"}
    assert roles.never_executed == ["unused"] and "unused" in roles.info
    fallback = find_roles(model)
    assert fallback.source == "registration" and "registration order" in fallback.info
    assert fallback.role_of("head") == "proj", "registration order takes the first registered"


def test_roles_in_a_cnn_with_1x1_grouped_and_depthwise_convs():
    torch.manual_seed(0)
    model = TinyCNN()
    roles = find_roles(model, torch.randn(1, 3, 6, 6))
    assert roles.role_of("stem") == "proj" and roles.role_of("head") == "head"
    inner = [f"blocks.{i}.{c}" for i in range(2) for c in ("dw", "pw", "grouped")]
    assert roles.order == ["stem", *inner, "head"]
    assert all(roles.role_of(n) == "block" for n in inner)
    assert "blocks.0.bn" not in roles.roles, "BatchNorm gets no role"


def test_roles_forward_leaves_model_state_alone():
    torch.manual_seed(0)
    model = TinyCNN().train()
    model.blocks[1].eval()
    before = model.blocks[0].bn.running_mean.clone()
    find_roles(model, example_kwargs={"x": torch.randn(2, 3, 4, 4)})
    assert torch.equal(model.blocks[0].bn.running_mean, before), "ran in eval mode: no BN update"
    assert model.training and model.blocks[0].training and not model.blocks[1].training, \
        "every module's training flag is restored"
    assert not any(h for m in model.modules() for h in m._forward_pre_hooks.values()), \
        "hooks are removed"


def test_roles_errors():
    with pytest.raises(InputError, match=r"example forward failed.*RuntimeError"):
        find_roles(Reordered(), (torch.randn(2, 5),))
    with pytest.raises(InputError, match=r"model is a str; pass a torch\.nn\.Module"):
        find_roles("model")
    with pytest.raises(InputError, match=r"example_kwargs is a list"):
        find_roles(Reordered(), (torch.randn(2, 4),), [1])


def test_single_layer_is_proj_and_embedding_has_no_role():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2))
    roles = find_roles(model, torch.tensor([[1, 2]]))
    assert roles.roles == {"1": "proj"}

# ---------------------------------------------------------------------------- selection


def test_quantizable_types_constant():
    from lowbit.nn.complex import ComplexPoint

    assert QUANTIZABLE == (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, ComplexPoint)


def test_flags_recipe_quantizes_block_convs_only():
    torch.manual_seed(0)
    model = TinyCNN()
    roles = find_roles(model, torch.randn(1, 3, 4, 4))
    configs, records = select_layers(model, recipe_from_flags(q_block_linear=True), roles)
    inner = {f"blocks.{i}.{c}" for i in range(2) for c in ("dw", "pw", "grouped")}
    assert set(configs) == inner, "depthwise, 1x1 and grouped convs inside blocks are selected"
    recs = _records(records)
    assert recs["stem"].action == "float" and recs["stem"].reason.startswith("rule 0 keeps it float")
    assert recs["head"].action == "float" and "rule 1 keeps it float" in recs["head"].reason
    assert "execution order" in recs["blocks.0.pw"].reason
    assert recs["blocks.0.pw"].config == configs["blocks.0.pw"].to_dict()
    assert "blocks.0.bn" not in recs, "a module no rule selects gets no record"


def test_first_match_wins():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    float_first = Recipe((Rule(ByName("1"), None), Rule(ByType("Linear"), CFG)))
    configs, records = select_layers(model, float_first)
    assert set(configs) == {"0"}
    assert _records(records)["1"].reason.startswith("rule 0 keeps it float")
    quant_first = Recipe((Rule(ByType("Linear"), CFG), Rule(ByName("1"), None)))
    assert set(select_layers(model, quant_first)[0]) == {"0", "1"}, "the earlier rule wins"


def test_unsupported_selected_layer_is_skipped_with_reason():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Embedding(3, 4))
    recipe = Recipe((Rule(ByName("1"), CFG), Rule(ByName("2"), CFG)))
    configs, records = select_layers(model, recipe)
    assert configs == {}
    recs = _records(records)
    assert recs["1"].action == "skipped" and "LayerNorm is not a type lowbit can quantize" \
        in recs["1"].reason
    assert recs["2"].action == "skipped" and "Embedding's input is integer indices" \
        in recs["2"].reason
    assert "0" not in recs


def test_group_size_need_not_divide_input_dimension():
    """A group size that does not divide K leaves a shorter last group (ragged): every
    layer is selected, none skipped for its width."""
    model = nn.Sequential(nn.Linear(256, 4), nn.Linear(96, 4), nn.Linear(576, 4),
                          nn.Conv2d(256, 256, 1, groups=4), nn.Embedding(10, 8))
    configs, records = select_layers(model, "w4a16-g128")
    assert set(configs) == {"0", "1", "2", "3", "4"}
    assert all(r.action == "quantized" for r in records)
    assert configs["4"].weight.qtype.bits == 8, "w4a16-g128 keeps Embedding tables at int8"


def test_presets_on_a_cnn_and_embedding():
    configs, records = select_layers(TinyCNN(), "w8a8-static")
    assert len(configs) == 8 and all(r.action == "quantized" for r in records)
    configs, _ = select_layers(nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 2)), PRESETS["w8a8"])
    assert configs["0"].act is None and configs["1"].act is not None


def test_container_rule_applies_inside_unless_an_earlier_rule_matches():
    model = TinyCNN()
    recipe = Recipe((Rule(ByName("blocks.0.pw"), CFG), Rule(ByName("blocks.0"), None),
                     Rule(ByType("Conv2d"), CFG)))
    configs, records = select_layers(model, recipe)
    recs = _records(records)
    assert recs["blocks.0.dw"].action == "float" and "via container 'blocks.0'" \
        in recs["blocks.0.dw"].reason
    assert recs["blocks.0.pw"].action == "quantized", "rule 0 matches the layer itself first"
    assert "blocks.0.bn" not in recs, "a container's rule reaches only quantizable layers"
    assert "blocks.0" not in recs and "blocks.1.dw" in configs


def test_any_module_selects_leaves_not_containers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    configs, records = select_layers(model, Recipe((Rule(AnyModule(), CFG),)))
    assert set(configs) == {"0"}
    assert [(r.name, r.action) for r in records] == [("0", "quantized"), ("1", "skipped")]


class LoRALinear(nn.Linear):
    def __init__(self):
        super().__init__(4, 4)
        self.lora = nn.Linear(4, 4)


def test_children_of_a_selected_module_are_not_selected_again():
    model = nn.Sequential(LoRALinear())
    configs, records = select_layers(model, Recipe((Rule(ByType("Linear"), CFG),)))
    assert list(configs) == ["0"] and [r.name for r in records] == ["0"]


def test_shared_module_is_selected_once():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    configs, records = select_layers(model, "w8a16")
    assert list(configs) == ["0"] and len(records) == 1


def test_empty_config_and_bad_granularity():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    recipe = Recipe((Rule(ByName("0"), LayerConfig()),
                     Rule(ByName("1"), LayerConfig(weight=weight_spec(int8, PerChannel(3))))))
    configs, records = select_layers(model, recipe)
    recs = _records(records)
    assert configs == {} and recs["0"].action == "float" and "neither" in recs["0"].reason
    assert recs["1"].action == "skipped" and "axis=3 is out of range" in recs["1"].reason


def test_is_quantizable():
    assert is_quantizable(nn.Conv1d(2, 2, 1), CFG) == (True, "")
    assert is_quantizable(nn.LazyLinear(4), CFG)[1].startswith("its weight is not initialised")
    assert is_quantizable(nn.Linear(64, 2), LayerConfig(weight_spec(int4, PerGroup(128, 1)))) \
        == (True, ""), "a group wider than K is one group of K"
    assert is_quantizable(nn.GELU(), None)[0] is False


def test_complex_point_is_quantizable_for_its_activation_only():
    from lowbit.config import QuantSpec
    from lowbit.nn.complex import ComplexPoint

    assert is_quantizable(ComplexPoint(), LayerConfig(act=QuantSpec())) == (True, "")
    ok, reason = is_quantizable(ComplexPoint(), CFG)
    assert not ok and reason == "a ComplexPoint has no weight; give it weight=None (activation only)"


def test_role_recipe_without_roles_falls_back_and_says_so(caplog):
    torch.manual_seed(0)
    model = Reordered()
    with caplog.at_level(logging.WARNING, logger="lowbit.model.select"):
        configs, records = select_layers(model, recipe_from_flags(q_proj=True))
    assert "registration order" in caplog.text
    assert list(configs) == ["head"], "by registration the first Linear is 'head'"
    assert "by registration order" in _records(records)["head"].reason


def test_select_errors():
    with pytest.raises(ConfigError, match=r"roles='dict'.*a RoleMap or None"):
        select_layers(Reordered(), "w8a8", roles={})
    with pytest.raises(InputError, match=r"model is a int"):
        select_layers(3, "w8a8")
    with pytest.raises(ConfigError, match=r"recipe='w1a1'"):
        select_layers(Reordered(), "w1a1")
    assert isinstance(find_roles(Reordered()), RoleMap)
