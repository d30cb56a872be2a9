"""Which layers of a model a recipe quantizes, and each layer's role.

:func:`find_roles` runs one example forward with pre-hooks and names the first
Linear/Conv the input reaches ``proj``, the last ``head`` and every other
executed one ``block``; without example inputs it falls back to registration
order and says so.  :func:`select_layers` applies a recipe (first match wins)
and returns the configs of the layers to quantize plus a :class:`LayerRecord`
for every module a rule selected: quantized, kept float, or skipped with why.

Containers (modules with children that lowbit cannot quantize themselves, such
as ``nn.Sequential`` or a transformer block) are never selected; a rule that
matches a container applies to the Linear/Conv/Embedding layers inside it,
unless a lower-numbered rule matches such a layer itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import LayerConfig
from ..errors import ConfigError, InputError
from ..nn.complex import ComplexPoint
from ..recipe import ByName, ByRole, ByType, Recipe, Selector, load_recipe
from ..records import LayerRecord
from .ties import unify_tied

logger = logging.getLogger(__name__)

#: Module types lowbit can quantize (weights; activations too except for Embedding;
#: a ComplexPoint's complex activation only).
QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, ComplexPoint)
#: Module types that get a role (proj/head/block): the quantizable ones that compute on inputs.
ROLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)

ROLE_SOURCES = ("execution", "registration")

# ---------------------------------------------------------------------------- roles


@dataclass
class RoleMap:
    """Role of every Linear/Conv layer.

    roles: name -> "proj" | "head" | "block", or None for a layer never executed.
    order: names in execution order (or registration order when ``source`` says so).
    source: "execution" (one example forward) or "registration" (fallback, no inputs).
    never_executed: layers the example forward did not reach (role None).
    info: a sentence saying how the roles were found.
    """

    roles: dict[str, str | None]
    order: list[str]
    source: str
    never_executed: list[str] = field(default_factory=list)
    info: str = ""

    def role_of(self, name: str) -> str | None:
        """The role of layer ``name``, or None (not a Linear/Conv, or never executed)."""
        return self.roles.get(name)


def _assign(order: list[str]) -> dict[str, str]:
    roles = {name: "block" for name in order}
    if order:
        roles[order[-1]] = "head"
        roles[order[0]] = "proj"  # a single layer is the projection
    return roles


def _execution_order(model: nn.Module, candidates: dict[str, nn.Module],
                     args: tuple, kwargs: dict) -> list[str]:
    """Names of ``candidates`` in the order one forward first reaches them."""
    order: list[str] = []
    seen: set[str] = set()

    def hook_for(name: str):
        def hook(module, inputs):
            if name not in seen:
                seen.add(name)
                order.append(name)
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in candidates.items()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # no BatchNorm statistics updated, no dropout drawn
        with torch.no_grad():
            model(*args, **kwargs)
    except Exception as exc:
        raise InputError(f"find_roles: the example forward failed ({type(exc).__name__}: "
                         f"{exc}); pass example_args/example_kwargs the model accepts, "
                         "or none to use registration order") from exc
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return order


def find_roles(model: nn.Module, example_args: Any = None,
               example_kwargs: dict | None = None) -> RoleMap:
    """Roles of the model's Linear/Conv1d/Conv2d layers by execution order.

    One forward on the example inputs runs under ``torch.no_grad`` in eval mode (training
    flags are restored after); ``proj`` is the first layer reached, ``head`` the last,
    ``block`` every other reached layer, and layers never reached get None. Without example
    inputs the registration order is used instead and ``source``/``info`` say so.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"find_roles: model is a {type(model).__name__}; pass a torch.nn.Module")
    candidates = {n: m for n, m in model.named_modules() if isinstance(m, ROLE_TYPES)}
    if example_args is None and example_kwargs is None:
        order = list(candidates)
        info = ("roles by registration order: no example inputs were given, so the execution "
                "order is unknown; pass example_args to find_roles for the true order")
        logger.info(info)
        return RoleMap(_assign(order), order, "registration", [], info)
    if not isinstance(example_args, (tuple, list)):
        example_args = () if example_args is None else (example_args,)
    if example_kwargs is not None and not isinstance(example_kwargs, dict):
        raise InputError(f"find_roles: example_kwargs is a {type(example_kwargs).__name__}; "
                         "pass a dict of keyword arguments or None")
    order = _execution_order(model, candidates, tuple(example_args), dict(example_kwargs or {}))
    never = [n for n in candidates if n not in set(order)]
    roles: dict[str, str | None] = dict.fromkeys(candidates)
    roles.update(_assign(order))
    info = f"roles by execution order of one example forward ({len(order)} layers reached)"
    if never:
        info += f"; never executed, so no role: {', '.join(never)}"
        logger.info("find_roles: layers never executed by the example forward: %s", never)
    return RoleMap(roles, order, "execution", never, info)

# ---------------------------------------------------------------------------- selection


def is_quantizable(module: nn.Module, config: LayerConfig | None) -> tuple[bool, str]:
    """Whether lowbit can quantize ``module`` with ``config``, and if not, why."""
    if not isinstance(module, QUANTIZABLE):
        return False, (f"{type(module).__name__} is not a type lowbit can quantize "
                       f"(supported: {', '.join(t.__name__ for t in QUANTIZABLE)})")
    if config is None:
        return True, ""
    if isinstance(module, nn.Embedding) and config.act is not None:
        return False, ("an Embedding's input is integer indices, which have no activation "
                       "quantization; give Embedding layers act=None (weight-only)")
    if config.weight is not None and not hasattr(module, "weight"):
        return False, (f"a {type(module).__name__} has no weight; give it weight=None "
                       "(activation only)")
    weight = getattr(module, "weight", None)
    if config.weight is not None:
        if not isinstance(weight, torch.Tensor) or isinstance(
                weight, nn.parameter.UninitializedParameter):
            return False, "its weight is not initialised yet; run one forward before selecting"
        try:
            config.weight.granularity.block_size(tuple(weight.shape))
        except InputError as exc:
            return False, f"weight of shape {tuple(weight.shape)}: {exc}"
    return True, ""


def _describe(selector: Selector, roles: RoleMap | None) -> str:
    if isinstance(selector, ByType):
        return f"type in {'/'.join(selector.types)}"
    if isinstance(selector, ByName):
        return f"name matches {selector.pattern!r}"
    if isinstance(selector, ByRole):
        return f"role {selector.role!r} by {roles.source if roles else 'registration'} order"
    return "any module"


@dataclass(frozen=True)
class _Match:
    index: int
    config: LayerConfig | None
    via: str | None = None  # the container whose match this is, if inherited


def _record(name: str, module: nn.Module, match: _Match, recipe: Recipe,
            roles: RoleMap | None) -> tuple[LayerRecord, bool]:
    """The record of a selected module and whether it is to be quantized."""
    how = _describe(recipe.rules[match.index].selector, roles)
    if match.via is not None:
        how += f", via container {match.via!r}"
    rule, kind, config = f"rule {match.index}", type(module).__name__, match.config
    if config is None:
        return LayerRecord(name, kind, "float", f"{rule} keeps it float ({how})"), False
    if config.weight is None and config.act is None:
        return LayerRecord(name, kind, "float", f"{rule} quantizes neither weight nor "
                           f"activation, so it stays float ({how})"), False
    ok, reason = is_quantizable(module, config)
    if not ok:
        return LayerRecord(name, kind, "skipped", f"{rule} ({how}) selects it, but {reason}",
                           config=config.to_dict()), False
    return LayerRecord(name, kind, "quantized", f"selected by {rule} ({how})",
                       config=config.to_dict()), True


def select_layers(model: nn.Module, recipe: Any, roles: RoleMap | None = None
                  ) -> tuple[dict[str, LayerConfig], list[LayerRecord]]:
    """Apply ``recipe`` (a Recipe or anything :func:`~lowbit.recipe.load_recipe` takes).

    Returns ``(configs, records)``: the LayerConfig of every layer to quantize, and a
    LayerRecord for every module a rule selected ("quantized", "float" or "skipped" with
    a reason). The first matching rule wins; children of a selected module are not
    selected again.  Layers sharing one weight Parameter get one weight spec
    (:mod:`lowbit.model.ties`). A recipe selecting by role without ``roles`` gets roles by
    registration order (logged, and named in each role-matched record).
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"select_layers: model is a {type(model).__name__}; "
                         "pass a torch.nn.Module")
    recipe = load_recipe(recipe)
    if roles is not None and not isinstance(roles, RoleMap):
        raise ConfigError("roles", type(roles).__name__, "a RoleMap or None",
                          fix="pass find_roles(model, example_args) or None")
    if roles is None and recipe.uses_roles:
        roles = find_roles(model)
        logger.warning("select_layers: recipe %r selects by role but no roles were given; "
                       "using registration order (pass find_roles(model, example_args))",
                       recipe.name)
    configs: dict[str, LayerConfig] = {}
    records: list[LayerRecord] = []
    visited: set[int] = set()

    def walk(module: nn.Module, name: str, inherited: _Match | None) -> None:
        if id(module) in visited:  # a module shared under two names is handled once
            return
        visited.add(id(module))
        found = recipe.match(name, module, roles.role_of(name) if roles else None)
        own = None if found is None else _Match(found[0], found[1])
        has_children = next(module.children(), None) is not None
        if has_children and not isinstance(module, QUANTIZABLE):  # a container
            if own is not None and (inherited is None or own.index < inherited.index):
                inherited = _Match(own.index, own.config, name or "<root>")
            own = None
        else:
            if isinstance(module, QUANTIZABLE) and inherited is not None and (
                    own is None or inherited.index < own.index):
                own = inherited
            if own is not None:
                record, quantize = _record(name, module, own, recipe, roles)
                records.append(record)
                if quantize:
                    configs[name] = own.config
                return  # children of a selected module are not selected again
        for child_name, child in module.named_children():
            walk(child, f"{name}.{child_name}" if name else child_name, inherited)

    walk(model, "", None)
    return unify_tied(model, configs, records), records  # one weight spec per tied weight
