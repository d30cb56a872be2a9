"""Candidates of a bit-width search, the layers they apply to, and what each layer costs.

A candidate is ``"float"`` (keep the layer float), a preset name (``"w8a16"``,
``"w4a16-g128"``, ...), a :class:`~lowbit.recipe.Recipe` or a
:class:`~lowbit.config.LayerConfig` (applied to every Linear/Conv/Embedding). A layer takes,
under each candidate, the config that candidate's recipe gives it (first matching rule), so a
preset that keeps Embedding at 8 bits does so here too.

Layers that must share a format form one *group*: modules holding the same weight tensor
(tied embeddings and heads), and any names the caller groups with fnmatch patterns.

A layer's cost under a config is the bytes its real low-bit module stores for the weight
(codes, scales, zero points) and bias, measured by building that module; float costs the
weight and bias in their dtype. Activation qparams (a few bytes per layer) are not counted.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from ..config import LayerConfig
from ..errors import ConfigError
from ..model.select import QUANTIZABLE, RoleMap, find_roles, select_layers
from ..model.batches import split_batch
from ..nn.tables import QAT_MODULES, QUANTIZED_MODULES
from ..recipe import ByType, Recipe, Rule, load_recipe

FLOAT = "float"


@dataclass(frozen=True)
class Candidate:
    """A named choice for a layer: a recipe, or None for float."""

    name: str
    recipe: Recipe | None


def parse_candidates(candidates: Any) -> list[Candidate]:
    """Candidates from names, recipes or LayerConfigs (a dict gives them names)."""
    if isinstance(candidates, str):
        candidates = [c.strip() for c in candidates.split(",")]
    items = list(candidates.items()) if isinstance(candidates, dict) else \
        [(None, c) for c in candidates] if isinstance(candidates, (list, tuple)) else None
    if not items:
        raise ConfigError("candidates", candidates, "a non-empty list of 'float', preset names, "
                          "Recipes or LayerConfigs", fix="e.g. ['w4a16-g128', 'w8a16']")
    out = []
    for i, (name, item) in enumerate(items):
        if item is None or item == FLOAT:
            out.append(Candidate(name or FLOAT, None))
        elif isinstance(item, LayerConfig):
            types = tuple(t.__name__ for t in QUANTIZABLE)
            out.append(Candidate(name or f"config{i}", Recipe((Rule(ByType(types), item),),
                                                               name or f"config{i}")))
        else:
            recipe = load_recipe(item)
            out.append(Candidate(name or recipe.name, recipe))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError("candidates", names, "distinct candidate names",
                          fix="list each candidate once, or name them with a dict")
    return out


def layer_configs(model: nn.Module, candidates: Sequence[Candidate], example: Any
                  ) -> dict[str, dict[str, LayerConfig | None]]:
    """``{layer: {candidate: config or None}}`` for every layer some candidate quantizes,
    in the model's registration order."""
    roles: RoleMap | None = None
    if any(c.recipe is not None and c.recipe.uses_roles for c in candidates):
        args, kwargs = split_batch(example)
        roles = find_roles(model, args, kwargs)
    per_candidate = {c.name: ({} if c.recipe is None else
                              select_layers(model, c.recipe, roles)[0]) for c in candidates}
    names = [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)
             and any(n in configs for configs in per_candidate.values())]
    if not names:
        raise ConfigError("candidates", [c.name for c in candidates], "candidates that quantize "
                          "some layer of the model", fix="use presets such as 'w8a16' that "
                          "select the model's Linear/Conv/Embedding layers")
    return {n: {c: per_candidate[c].get(n) for c in per_candidate} for n in names}


def layer_groups(model: nn.Module, names: Sequence[str], patterns: Sequence[Any] = ()
                 ) -> list[list[str]]:
    """Layers that must share a format: same weight tensor, or matched by one pattern group.

    ``patterns``: each item is a list of fnmatch patterns (or one pattern) whose matches form
    one group. Returns groups in the order of their first layer in ``names``.
    """
    parent = {n: n for n in names}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def union(a, b):
        parent[find(b)] = find(a)

    by_weight: dict[int, str] = {}
    for n in names:
        key = id(model.get_submodule(n).weight)
        if key in by_weight:
            union(by_weight[key], n)
        else:
            by_weight[key] = n
    for i, group in enumerate(patterns):
        pats = [group] if isinstance(group, str) else list(group)
        hits = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in pats)]
        if not hits:
            raise ConfigError(f"groups[{i}]", pats, "patterns matching searched layers",
                              fix=f"layer names look like {list(names)[:3]}")
        for n in hits[1:]:
            union(hits[0], n)
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())


def float_bytes(module: nn.Module) -> int:
    """Bytes of the module's weight and bias in their own dtype."""
    total = module.weight.numel() * module.weight.element_size()
    bias = getattr(module, "bias", None)
    return total + (0 if bias is None else bias.numel() * bias.element_size())


def stored_bytes(module: nn.Module, config: LayerConfig | None) -> int:
    """Bytes the real low-bit module stores for ``module`` under ``config`` (weight codes,
    scales, zero points, bias); float bytes when the config has no weight spec."""
    if config is None or config.weight is None:
        return float_bytes(module)
    qat = QAT_MODULES[type(module)].from_float(module, LayerConfig(config.weight, None))
    qat.start_observing()
    qat.freeze()
    real = QUANTIZED_MODULES[type(qat)].from_qat(qat)
    return int(real.nbytes())
