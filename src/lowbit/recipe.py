"""Recipes: which modules of a model are quantized, and how.

A :class:`Recipe` is an ordered tuple of :class:`Rule` s, each a selector and a
:class:`~lowbit.config.LayerConfig` (``None`` keeps the selected layers float).
The first rule that matches a module wins.  Selectors are data, so a recipe
round-trips through ``to_dict``/``from_dict``, JSON and YAML::

    Recipe((Rule(ByName("lm_head"), None),            # keep the head float
            Rule(ByType(("Linear",)), LayerConfig(weight=weight_spec(int4)))))

Selectors: :class:`ByType` (class name, matched along the MRO), :class:`ByName`
(``fnmatch`` on the qualified module name), :class:`ByRole` (``proj``/``head``/
``block``, assigned by :func:`lowbit.model.select.find_roles`) and :class:`AnyModule`.
:func:`load_recipe` turns a preset name, a file, or ``"module:attr"`` into a Recipe.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import json
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import yaml

from .config import LayerConfig
from .errors import ConfigError

RECIPE_VERSION = 1

#: Roles a layer can have in a model (see ``lowbit.model.select.find_roles``).
ROLES = ("proj", "head", "block")

RECIPE_SUFFIXES = (".json", ".yaml", ".yml")

# ---------------------------------------------------------------------------- selectors


class Selector:
    """Base class of selectors: ``matches(name, module, role)`` says whether a module is picked."""

    kind: ClassVar[str] = ""

    def matches(self, name: str, module: Any, role: str | None = None) -> bool:
        """True when the module called ``name`` (with ``role``, or None) is selected."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """This selector as a plain dict with a ``kind`` key."""
        raise NotImplementedError

    @staticmethod
    def from_dict(data: Any) -> "Selector":
        """Rebuild a selector from :meth:`to_dict` output (a Selector passes through)."""
        if isinstance(data, Selector):
            return data
        if not isinstance(data, Mapping) or data.get("kind") not in _SELECTORS:
            kind = data.get("kind") if isinstance(data, Mapping) else data
            raise ConfigError("selector.kind", kind, f"one of {sorted(_SELECTORS)}",
                              fix="e.g. {'kind': 'type', 'types': ['Linear']} or "
                                  "{'kind': 'name', 'pattern': 'blocks.*.fc1'}")
        cls = _SELECTORS[data["kind"]]
        args = {k: v for k, v in data.items() if k != "kind"}
        names = sorted(f.name for f in fields(cls))
        if set(args) != set(names):
            raise ConfigError(f"selector {data['kind']!r} keys", sorted(args),
                              f"exactly {names} besides 'kind'",
                              fix="check the keys' spelling, e.g. {'kind': 'name', "
                                  "'pattern': '*.fc1'}")
        return cls(**args)


def _class_name(value: Any) -> str:
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError("ByType.types", value, "class names such as 'Linear' or "
                      "'torch.nn.Linear', or the classes themselves",
                      fix="e.g. ByType(('Linear', 'Conv2d')) or ByType((torch.nn.Linear,))")


def _name_matches_class(pattern: str, cls: type) -> bool:
    """``Linear`` matches by class name; ``torch.nn.Linear`` by the class's module path or a
    package above it that re-exports it (``torch.nn.modules.linear.Linear`` lives in torch.nn)."""
    if "." not in pattern:
        return pattern == cls.__name__
    package, _, qualname = pattern.rpartition(".")
    module = cls.__module__
    return qualname == cls.__qualname__ and (module == package or module.startswith(package + "."))


@dataclass(frozen=True)
class ByType(Selector):
    """Modules whose class, or any base class, has one of ``types`` (names or classes)."""

    types: tuple[str, ...]
    kind: ClassVar[str] = "type"

    def __post_init__(self):
        raw = self.types
        if isinstance(raw, (str, type)):
            raw = (raw,)
        if not isinstance(raw, (tuple, list)) or not raw:
            raise ConfigError("ByType.types", self.types, "a non-empty tuple of class names "
                              "or classes", fix="e.g. ByType(('Linear', 'Conv2d'))")
        object.__setattr__(self, "types", tuple(_class_name(t) for t in raw))

    def matches(self, name, module, role=None):
        return any(_name_matches_class(pattern, cls)
                   for cls in type(module).__mro__ for pattern in self.types)

    def to_dict(self):
        return {"kind": self.kind, "types": list(self.types)}


@dataclass(frozen=True)
class ByName(Selector):
    """Modules whose qualified name matches ``pattern`` (``fnmatch``; ``*`` also crosses dots)."""

    pattern: str
    kind: ClassVar[str] = "name"

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ConfigError("ByName.pattern", self.pattern, "a non-empty fnmatch pattern",
                              fix="e.g. ByName('blocks.*.attn.*') or ByName('lm_head')")

    def matches(self, name, module, role=None):
        return fnmatch.fnmatchcase(name, self.pattern)

    def to_dict(self):
        return {"kind": self.kind, "pattern": self.pattern}


@dataclass(frozen=True)
class ByRole(Selector):
    """Modules with ``role``: ``proj`` (first executed layer), ``head`` (last), ``block`` (others)."""

    role: str
    kind: ClassVar[str] = "role"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ConfigError("ByRole.role", self.role, f"one of {ROLES}",
                              fix="'proj' is the first layer the input reaches, 'head' the "
                                  "last, 'block' every other Linear/Conv")

    def matches(self, name, module, role=None):
        return role == self.role

    def to_dict(self):
        return {"kind": self.kind, "role": self.role}


@dataclass(frozen=True)
class AnyModule(Selector):
    """Every module (use as a last, catch-all rule)."""

    kind: ClassVar[str] = "any"

    def matches(self, name, module, role=None):
        return True

    def to_dict(self):
        return {"kind": self.kind}


_SELECTORS: dict[str, type] = {c.kind: c for c in (ByType, ByName, ByRole, AnyModule)}

# ---------------------------------------------------------------------------- rules and recipes


@dataclass(frozen=True)
class Rule:
    """Modules picked by ``selector`` get ``config``; ``None`` keeps them float."""

    selector: Selector
    config: LayerConfig | None = None

    def __post_init__(self):
        object.__setattr__(self, "selector", Selector.from_dict(self.selector))
        if isinstance(self.config, Mapping):
            object.__setattr__(self, "config", LayerConfig.from_dict(self.config))
        elif self.config is not None and not isinstance(self.config, LayerConfig):
            raise ConfigError("Rule.config", self.config, "a LayerConfig, its dict, or None",
                              fix="pass LayerConfig(weight=..., act=...) or None to keep float")

    def to_dict(self) -> dict:
        """``{'selector': {...}, 'config': {...} | None}``."""
        return {"selector": self.selector.to_dict(),
                "config": None if self.config is None else self.config.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> "Rule":
        """Rebuild a rule from :meth:`to_dict` output."""
        if not isinstance(data, Mapping) or set(data) - {"selector", "config"} \
                or "selector" not in data:
            raise ConfigError("rule", data, "a dict with keys 'selector' and 'config'",
                              fix="e.g. {'selector': {'kind': 'any'}, 'config': null}")
        return cls(data["selector"], data.get("config"))


@dataclass(frozen=True)
class Recipe:
    """Ordered rules; for each module the first matching rule wins."""

    rules: tuple[Rule, ...]
    name: str = "custom"

    def __post_init__(self):
        if not isinstance(self.rules, (tuple, list)):
            raise ConfigError("Recipe.rules", self.rules, "a tuple of Rule",
                              fix="e.g. Recipe((Rule(ByType(('Linear',)), config),))")
        rules = []
        for i, rule in enumerate(self.rules):
            if isinstance(rule, Mapping):
                rule = _located(f"Recipe.rules[{i}]", Rule.from_dict, rule)
            if not isinstance(rule, Rule):
                raise ConfigError(f"Recipe.rules[{i}]", rule, "a Rule or its dict",
                                  fix="wrap selector and config in Rule(selector, config)")
            rules.append(rule)
        object.__setattr__(self, "rules", tuple(rules))
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("Recipe.name", self.name, "a non-empty string", fix="e.g. 'w8a8'")

    def match(self, name: str, module: Any, role: str | None = None
              ) -> tuple[int, LayerConfig | None] | None:
        """``(rule_index, config)`` of the first rule selecting the module, or None if none does."""
        for index, rule in enumerate(self.rules):
            if rule.selector.matches(name, module, role):
                return index, rule.config
        return None

    @property
    def uses_roles(self) -> bool:
        """True when some rule selects by role (then layer roles must be known)."""
        return any(isinstance(rule.selector, ByRole) for rule in self.rules)

    def to_dict(self) -> dict:
        """``{'version', 'name', 'rules': [...]}``, plain data for JSON/YAML."""
        return {"version": RECIPE_VERSION, "name": self.name,
                "rules": [rule.to_dict() for rule in self.rules]}

    @classmethod
    def from_dict(cls, data: Any) -> "Recipe":
        """Rebuild a recipe from :meth:`to_dict` output, checking keys and version."""
        if not isinstance(data, Mapping) or "rules" not in data:
            raise ConfigError("Recipe", data, "a dict with 'version', 'name' and 'rules'",
                              fix="pass Recipe.to_dict() output")
        version = data.get("version", RECIPE_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) \
                or not 1 <= version <= RECIPE_VERSION:
            raise ConfigError("Recipe.version", version, f"an integer in [1, {RECIPE_VERSION}]",
                              fix="upgrade lowbit to read recipes written by a newer version")
        unknown = set(data) - {"version", "name", "rules"}
        if unknown:
            raise ConfigError("Recipe keys", sorted(unknown), "only 'version', 'name', 'rules'",
                              fix="remove the unknown keys (check their spelling)")
        rules = data["rules"]
        if not isinstance(rules, (list, tuple)):
            raise ConfigError("Recipe.rules", rules, "a list of rules",
                              fix="write rules as a list of {'selector': ..., 'config': ...}")
        return cls(tuple(rules), data.get("name", "custom"))

    def to_json(self, path: str | Path | None = None) -> str:
        """The recipe as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The recipe as YAML text; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path_or_str: str | Path) -> "Recipe":
        """Read a recipe from a ``.json`` file or from JSON text."""
        return _parse_document(path_or_str, "JSON", _load_json)

    @classmethod
    def from_yaml(cls, path_or_str: str | Path) -> "Recipe":
        """Read a recipe from a ``.yaml``/``.yml`` file or from YAML text."""
        return _parse_document(path_or_str, "YAML", _load_yaml)


def _located(where: str, build: Callable[[Any], Any], data: Any) -> Any:
    """Run ``build(data)``, prefixing the field of any ConfigError with ``where``."""
    try:
        return build(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field}", exc.value, exc.allowed, exc.fix) from None


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
                         ) from None


def _load_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {str(exc).splitlines()[0]}") from None


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a one-line document longer than a file name may be
        return False


def _parse_document(source: str | Path, fmt: str, load: Callable[[str], Any]) -> Recipe:
    """Read ``source`` (a path, or the document text itself) and build a Recipe, naming the
    file and what is wrong with it on failure."""
    if not isinstance(source, (str, Path)):
        raise ConfigError("recipe", source, f"a path to a {fmt} file or {fmt} text",
                          fix="pass a path such as 'recipe.yaml'")
    is_path = isinstance(source, Path) or (
        "\n" not in source and (source.lower().endswith(RECIPE_SUFFIXES) or _is_file(source)))
    label = f"file {str(source)!r}" if is_path else f"{fmt} text"
    if is_path:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("recipe file", str(source), "an existing, readable file",
                              fix=f"check the path ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError("recipe file", str(source), "UTF-8 text",
                              fix=f"the file is not UTF-8 (byte {exc.start}: {exc.reason}); "
                                  "save it as UTF-8") from None
    else:
        text = source
    try:
        data = load(text)
    except ValueError as exc:
        raise ConfigError("recipe", label, f"a {fmt} recipe document",
                          fix=f"{label} is {exc}") from None
    try:
        return Recipe.from_dict(data)
    except ConfigError as exc:
        raise ConfigError("recipe", label, "a recipe document {'version': 1, 'name': ..., "
                          "'rules': [{'selector': ..., 'config': ...}]}",
                          fix=f"in {label}: {exc}") from None


#: Recipes known by name (the presets register themselves here): ``load_recipe("w8a8")``.
NAMED_RECIPES: dict[str, "Recipe"] = {}


def register_named_recipe(name: str, recipe: "Recipe") -> "Recipe":
    """Make ``recipe`` loadable by ``name`` (a later registration of the name replaces it)."""
    assert isinstance(recipe, Recipe), type(recipe)
    NAMED_RECIPES[name] = recipe
    return recipe


def _call_recipe_factory(ref: str, module_name: str, fn: Any) -> Any:
    """Call ``fn()`` only when it is a Python function outside the standard library that
    takes no arguments: ``os:system`` or ``sys:exit`` is refused, never called."""
    top = module_name.split(".")[0]
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    try:
        no_args = inspect.isfunction(fn) and not any(
            p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                 p.KEYWORD_ONLY)
            for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        no_args = False
    if top in stdlib or not no_args:
        raise ConfigError("recipe", ref, "'module:attr' that is a Recipe, or a Python function "
                          "of your own taking no arguments that returns one",
                          fix=f"{ref} is a {type(fn).__name__} that lowbit will not call; "
                              "name a Recipe object or a recipe-building function") from None
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the user's function failed: say which
        raise ConfigError("recipe", ref, "a function that returns a Recipe",
                          fix=f"calling {ref}() raised {type(exc).__name__}: "
                              f"{str(exc)[:200]}") from None


_OBJECT_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _load_object(ref: str) -> Recipe:
    """Import ``module:attr``; the attribute is a Recipe or a callable returning one."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("recipe", ref, "'module:attr' naming an importable module",
                          fix=f"cannot import {module_name!r} ({exc}); check the module path "
                              "and that it is on sys.path") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError("recipe", ref, "'module:attr' naming an existing attribute",
                              fix=f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Recipe) and callable(obj):
        obj = _call_recipe_factory(ref, module_name, obj)
    if not isinstance(obj, Recipe):
        raise ConfigError("recipe", ref, "'module:attr' that is a Recipe or returns one",
                          fix=f"{ref} gave a {type(obj).__name__}; make it a lowbit Recipe")
    return obj


def load_recipe(obj: Any) -> Recipe:
    """A Recipe from a Recipe, a dict, a preset name, a ``.json``/``.yaml``/``.yml`` path,
    or ``"module:attr"`` (a Python Recipe, or a callable returning one)."""
    if isinstance(obj, Recipe):
        return obj
    if isinstance(obj, Mapping):
        return Recipe.from_dict(obj)
    if isinstance(obj, Path) or (isinstance(obj, str) and obj.lower().endswith(RECIPE_SUFFIXES)):
        if str(obj).lower().endswith(".json"):
            return Recipe.from_json(Path(obj))
        if str(obj).lower().endswith((".yaml", ".yml")):
            return Recipe.from_yaml(Path(obj))
        raise ConfigError("recipe file", str(obj), f"a file ending in {RECIPE_SUFFIXES}",
                          fix="save the recipe with Recipe.to_json(path) or to_yaml(path)")
    if isinstance(obj, str):
        if obj in NAMED_RECIPES:
            return NAMED_RECIPES[obj]
        if _OBJECT_REF.match(obj):
            return _load_object(obj)
    raise ConfigError("recipe", obj, f"a preset ({', '.join(NAMED_RECIPES)}), a path to a "
                      f"{'/'.join(RECIPE_SUFFIXES)} file, 'module:attr', or a Recipe",
                      fix="pick a preset name (see lowbit.presets.describe_presets()) "
                          "or pass a recipe file")
