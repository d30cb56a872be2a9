"""Recipes: selectors, first-match-wins, serialization (dict/JSON/YAML) and load_recipe."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from torch import nn

from lowbit.config import LayerConfig, QuantSpec, weight_spec
from lowbit.errors import ConfigError
from lowbit.presets import PRESETS
from lowbit.recipe import (ROLES, AnyModule, ByName, ByRole, ByType, Recipe, Rule, Selector,
                           load_recipe)
from lowbit.types import PerGroup, Scheme, int4, int8

CFG8 = LayerConfig(weight=weight_spec(int8), act=QuantSpec(int8, Scheme.AFFINE))
CFG4 = LayerConfig(weight=weight_spec(int4, PerGroup(32, axis=1)))


class MyLinear(nn.Linear):
    """A subclass: ByType('Linear') must find nn.Linear along its MRO."""


class Linear(nn.Module):
    """Not torch's Linear, but with the same class name."""


# ---------------------------------------------------------------------------- selectors


def test_bytype_matches_class_name_and_mro():
    sel = ByType(("Linear", "Conv2d"))
    assert sel.matches("a", nn.Linear(2, 2)), "plain class name must match torch.nn.Linear"
    assert sel.matches("a", MyLinear(2, 2)), "a subclass of Linear must match through its MRO"
    assert sel.matches("a", nn.Conv2d(1, 1, 1))
    assert not sel.matches("a", nn.Conv1d(1, 1, 1)), "Conv1d is not in the selector"
    assert not sel.matches("a", nn.LayerNorm(2))


def test_bytype_qualified_names_and_classes():
    qualified = ByType(("torch.nn.Linear",))
    assert qualified.matches("a", nn.Linear(2, 2)), "torch.nn re-exports Linear"
    assert qualified.matches("a", MyLinear(2, 2))
    assert not qualified.matches("a", Linear()), "a local class named Linear is not torch's"
    by_class = ByType((nn.Embedding,))
    assert by_class.types == ("torch.nn.modules.sparse.Embedding",), "classes stored by name"
    assert by_class.matches("e", nn.Embedding(3, 2)) and not by_class.matches("l", nn.Linear(1, 1))
    assert ByType("Linear") == ByType(("Linear",)), "a single name is accepted"


@pytest.mark.parametrize("types", [(), (3,), ("",)])
def test_bytype_rejects_bad_types(types):
    with pytest.raises(ConfigError, match=r"ByType\.types=.* is invalid"):
        ByType(types)


def test_byname_fnmatch_on_qualified_name():
    sel = ByName("blocks.*.fc1")
    assert sel.matches("blocks.0.fc1", None) and sel.matches("blocks.11.fc1", None)
    assert not sel.matches("blocks.0.fc2", None) and not sel.matches("fc1", None)
    with pytest.raises(ConfigError, match=r"ByName\.pattern=''"):
        ByName("")


def test_byrole_and_any():
    assert ROLES == ("proj", "head", "block")
    assert ByRole("head").matches("x", None, "head")
    assert not ByRole("head").matches("x", None, "proj")
    assert not ByRole("head").matches("x", None, None), "a layer without role matches no role"
    assert AnyModule().matches("anything", nn.ReLU(), None)
    with pytest.raises(ConfigError, match=r"ByRole\.role='tail'.*'proj', 'head', 'block'"):
        ByRole("tail")


@pytest.mark.parametrize("data, match", [
    ({"kind": "regex", "pattern": "x"}, r"selector\.kind='regex'.*'any', 'name', 'role', 'type'"),
    ("Linear", r"selector\.kind='Linear'"),
    ({"kind": "name", "patern": "x"}, r"selector 'name' keys=\['patern'\].*exactly \['pattern'\]"),
])
def test_selector_from_dict_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        Selector.from_dict(data)

# ---------------------------------------------------------------------------- recipes


def test_first_match_wins_and_none_keeps_float():
    recipe = Recipe((Rule(ByName("head"), None), Rule(ByType("Linear"), CFG8),
                     Rule(AnyModule(), CFG4)))
    assert recipe.match("head", nn.Linear(2, 2)) == (0, None), "rule 0 comes first"
    assert recipe.match("body", nn.Linear(2, 2)) == (1, CFG8)
    assert recipe.match("norm", nn.LayerNorm(2)) == (2, CFG4)
    assert Recipe((Rule(ByType("Linear"), CFG8),)).match("n", nn.ReLU()) is None


def test_recipe_validates_rules_and_name():
    with pytest.raises(ConfigError, match=r"Recipe\.rules=.*a tuple of Rule"):
        Recipe(Rule(AnyModule(), None))
    with pytest.raises(ConfigError, match=r"Recipe\.rules\[0\]=.*a Rule or its dict"):
        Recipe((AnyModule(),))
    with pytest.raises(ConfigError, match=r"Recipe\.name=''"):
        Recipe((), name="")
    with pytest.raises(ConfigError, match=r"Rule\.config='w8a8'"):
        Rule(AnyModule(), "w8a8")
    with pytest.raises(ConfigError, match=r"rule=.*keys 'selector' and 'config'"):
        Rule.from_dict({"select": {"kind": "any"}})


def _custom() -> Recipe:
    return Recipe((Rule(ByName("lm_head"), None), Rule(ByRole("proj"), CFG8),
                   Rule(ByType((nn.Linear, "Conv2d")), CFG4), Rule(AnyModule(), None)),
                  name="mine")


def test_dict_round_trip_has_version():
    recipe = _custom()
    data = recipe.to_dict()
    assert data["version"] == 1 and data["name"] == "mine" and len(data["rules"]) == 4
    assert json.loads(json.dumps(data)) == data, "to_dict must be plain JSON data"
    assert Recipe.from_dict(data) == recipe


@pytest.mark.parametrize("data, match", [
    ({"version": 2, "rules": []}, r"Recipe\.version=2"),
    ({"version": 1, "rules": [], "extra": 1}, r"Recipe keys=\['extra'\]"),
    ({"version": 1}, r"Recipe=.*'rules'"),
    ({"rules": {"a": 1}}, r"Recipe\.rules=.*a list of rules"),
    ({"rules": [{"selector": {"kind": "role", "role": "tail"}, "config": None}]},
     r"Recipe\.rules\[0\]\.ByRole\.role='tail'"),
])
def test_from_dict_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        Recipe.from_dict(data)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_json_and_yaml(name, tmp_path):
    recipe = PRESETS[name]
    assert Recipe.from_json(recipe.to_json()) == recipe, "JSON text round trip"
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe, "YAML text round trip"
    recipe.to_json(tmp_path / "r.json")
    recipe.to_yaml(tmp_path / "r.yaml")
    assert Recipe.from_json(tmp_path / "r.json") == recipe
    assert Recipe.from_yaml(str(tmp_path / "r.yaml")) == recipe
    assert load_recipe(str(tmp_path / "r.json")) == recipe


def test_custom_recipe_round_trips_files(tmp_path):
    recipe = _custom()
    recipe.to_yaml(tmp_path / "r.yml")
    assert load_recipe(tmp_path / "r.yml") == recipe
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match=r"recipe file=.*missing\.json.*existing, readable"):
        Recipe.from_json(missing)
    broken = tmp_path / "broken.json"
    broken.write_text('{"rules": [', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.json.*not valid JSON.*line 1"):
        load_recipe(broken)
    bad_role = tmp_path / "bad_role.yaml"
    bad_role.write_text(textwrap.dedent("""\
        version: 1
        rules:
          - selector: {kind: role, role: tail}
            config: null
        """), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad_role\.yaml.*rules\[0\]\.ByRole\.role='tail'"):
        load_recipe(str(bad_role))
    with pytest.raises(ConfigError, match=r"recipe=.*YAML text.*not valid YAML"):
        Recipe.from_yaml("rules: [\n  - {")
    with pytest.raises(ConfigError, match=r"recipe=.*JSON text.*Recipe=\[1, 2\]"):
        Recipe.from_json("[1, 2]")
    with pytest.raises(ConfigError, match=r"recipe=3.*a path to a JSON file"):
        Recipe.from_json(3)

# ---------------------------------------------------------------------------- load_recipe


MODULE_SOURCE = """
from lowbit.recipe import AnyModule, Recipe, Rule
RECIPE = Recipe((Rule(AnyModule(), None),), name="from-module")
def make():
    return Recipe((Rule(AnyModule(), None),), name="from-callable")
NOT_A_RECIPE = 42
"""


@pytest.fixture
def recipe_module(tmp_path, monkeypatch):
    (tmp_path / "my_recipes_mod.py").write_text(MODULE_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_recipes_mod"


def test_load_recipe_accepts_every_form(recipe_module):
    recipe = _custom()
    assert load_recipe(recipe) is recipe
    assert load_recipe("w8a8") is PRESETS["w8a8"]
    assert load_recipe(recipe.to_dict()) == recipe
    assert load_recipe(f"{recipe_module}:RECIPE").name == "from-module"
    assert load_recipe(f"{recipe_module}:make").name == "from-callable"


@pytest.mark.parametrize("obj, match", [
    ("w9a9", r"recipe='w9a9'.*w8a8, w8a8-static, w8a16, w4a16-g128, w4a8"),
    (Path("recipe.txt"), r"recipe file='recipe\.txt'.*a file ending in"),
    (12, r"recipe=12"),
    ("no_such_module_xyz:R", r"cannot import 'no_such_module_xyz'"),
])
def test_load_recipe_errors(obj, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(obj)


def test_load_recipe_object_errors(recipe_module):
    with pytest.raises(ConfigError, match=r"has no attribute 'MISSING'"):
        load_recipe(f"{recipe_module}:MISSING")
    with pytest.raises(ConfigError, match=r"gave a int; make it a lowbit Recipe"):
        load_recipe(f"{recipe_module}:NOT_A_RECIPE")
