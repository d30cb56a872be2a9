"""``search``: the best format for every layer under a size budget, solved exactly.

1. Each candidate is applied to the whole model once (prepare + calibrate), and each layer
   group's loss is measured with only that group quantized (``sensitivity='measured'``), or
   predicted from Hessian traces as ``0.5 tr(H)/n ||dW||^2`` (``sensitivity='hessian'``,
   weight noise only, no sweep). Float costs nothing in loss.
2. Each group's cost is the bytes its real modules store (:mod:`.candidates`).
3. The exact multiple-choice knapsack (:mod:`.knapsack`) minimises the summed loss within the
   budget at a resolution of ``budget / max_units`` bytes (costs rounded up, so the budget
   holds in bytes); one solve up to the dearest assignment gives the whole Pareto frontier.
4. The chosen recipe is measured: prepared, calibrated and scored as a whole, and its real
   size taken after ``convert``.

Losses are assumed to add up over groups; the measured metric of the chosen recipe says how
well that held.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..model.batches import call_checked, check_module
from ..model.convert import convert
from ..model.prepare import calibrate, prepare
from ..model.size import estimate_model_size
from ..nn.qat import weight_matrix
from ..nn.quantizer import TensorQuantizer
from ..recipe import ByName, Recipe, Rule
from ..runtime import eval_mode
from .budget import parse_budget
from .candidates import (
    FLOAT,
    float_bytes,
    layer_configs,
    layer_groups,
    parse_candidates,
    stored_bytes,
)
from .hessian import hutchinson_traces, predicted_loss
from .knapsack import MAX_UNITS, Knapsack, to_units
from .scoring import Scorer, as_batches
from .sensitivity import fake_quant_restored

logger = logging.getLogger(__name__)

SENSITIVITIES = ("measured", "hessian")


@dataclass
class SearchResult:
    """What :func:`search` found (``to_dict`` is JSON-able; ``recipe`` also saves as YAML)."""

    recipe: Recipe
    assignment: dict[str, str]              # layer -> candidate name
    candidates: list[str]
    metric_name: str
    float_metric: float
    budget: str
    budget_bytes: float
    resolution_bytes: float
    cost_bytes: int                         # stored bytes of the searched layers, chosen
    float_layer_bytes: int                  # the same layers kept float
    predicted_loss: float
    predicted_metric: float | None          # None when losses are Hessian estimates
    measured_metric: float
    measured_loss: float
    model_bytes: int                        # the whole converted model
    model_float_bytes: int
    sensitivity: str
    groups: list[list[str]]
    table: dict[str, dict[str, dict[str, float]]]   # group head -> candidate -> bytes, loss
    frontier: list[dict] = field(default_factory=list)
    uniform: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["recipe"] = self.recipe.to_dict()
        return data

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``search.json`` and ``recipe.yaml`` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "search.json", "recipe": out / "recipe.yaml"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.recipe.to_yaml(paths["recipe"])
        return paths


def _escape(name: str) -> str:
    """An fnmatch pattern matching exactly ``name``."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def recipe_for(assignment: dict[str, str], configs: dict[str, dict], name: str) -> Recipe:
    """A recipe giving each layer its assigned candidate's config (float: ``None``)."""
    rules = [Rule(ByName(_escape(layer)), configs[layer][cand] if cand != FLOAT else None)
             for layer, cand in assignment.items()]
    return Recipe(tuple(rules), name)


def _measured_losses(model, candidates, groups, batches, scorer, example, progress):
    """``{candidate: {group index: loss with only that group quantized}}``."""
    losses = {}
    for cand in candidates:
        if cand.recipe is None:
            continue
        qmodel = prepare(model, cand.recipe, example_inputs=example)
        with calibrate(qmodel):
            for batch in batches:
                _call(qmodel, batch)
        with fake_quant_restored(qmodel) as mods:
            for module in mods.values():
                module.set_fake_quant(False)
            losses[cand.name] = {}
            for g, members in enumerate(groups):
                present = [mods[n] for n in members if n in mods]
                if not present:
                    continue
                for m in present:
                    m.set_fake_quant(True)
                losses[cand.name][g] = scorer.loss(qmodel)
                for m in present:
                    m.set_fake_quant(False)
                if progress:
                    progress(f"{cand.name}: {members[0]}")
        del qmodel
    return losses


def _hessian_losses(model, candidates, groups, configs, batches, n_probes):
    names = [n for g in groups for n in g]
    traces = hutchinson_traces(model, {n: model.get_submodule(n).weight for n in names},
                               batches, n_probes=n_probes)
    losses = {}
    for cand in candidates:
        if cand.recipe is None:
            continue
        losses[cand.name] = {}
        for g, members in enumerate(groups):
            total, any_q = 0.0, False
            for n in members:
                config = configs[n][cand.name]
                if config is None or config.weight is None:
                    continue
                any_q = True
                module = model.get_submodule(n)
                tq = TensorQuantizer(config.weight)
                w = weight_matrix(module.weight).detach()
                tq.freeze(w)
                total += predicted_loss(traces.trace[n], traces.numel[n], tq(w) - w)
            if any_q:
                losses[cand.name][g] = total
    return losses, traces


def _call(model, batch, index: int = 0):
    with torch.no_grad():
        return call_checked(model, batch, index)


def search(model: nn.Module, candidates: Any, budget: Any, calib_data: Any,
           eval_fn: Callable[[nn.Module], float] | None = None, *,
           higher_is_better: bool = True, metric_name: str | None = None, sensitivity: str = "measured",
           groups: Sequence[Any] = (), max_batches: int | None = None,
           max_units: int = MAX_UNITS, n_probes: int = 4,
           progress: Callable[[str], None] | None = None) -> SearchResult:
    """Choose one candidate per layer group so the loss is least within ``budget``.

    candidates: e.g. ``["w4a16-g128", "w8a16"]`` (add ``"float"`` to allow float layers).
    budget: bytes, ``"0.3x"``, ``"4.5bits"`` or a :class:`~lowbit.search.budget.Budget`.
    calib_data: batches used to calibrate, and to score when ``eval_fn`` is None (then the
    metric is the outputs' cosine to float). groups: lists of fnmatch patterns of layers that
    must share a format (tied weights are grouped anyway). ``model`` is not modified.
    """
    if sensitivity not in SENSITIVITIES:
        raise ConfigError("sensitivity", sensitivity, f"one of {SENSITIVITIES}",
                          fix="'measured' sweeps one group at a time; 'hessian' estimates")
    check_module(model)
    budget = parse_budget(budget)
    cands = parse_candidates(candidates)
    batches = as_batches(calib_data, max_batches)
    with eval_mode(model):
        return _search(model, cands, budget, batches, eval_fn, higher_is_better, metric_name,
                       sensitivity, groups, max_units, n_probes, progress)


def _search(model, cands, budget, batches, eval_fn, higher_is_better, metric_name,
            sensitivity, groups, max_units, n_probes, progress) -> SearchResult:
    t0 = time.perf_counter()
    configs = layer_configs(model, cands, batches[0])
    names = list(configs)
    grouped = layer_groups(model, names, groups)
    modules = {n: model.get_submodule(n) for n in names}
    costs = {c.name: [sum(stored_bytes(modules[n], configs[n][c.name]) for n in g)
                      for g in grouped] for c in cands}
    float_costs = [sum(float_bytes(modules[n]) for n in g) for g in grouped]
    numel = sum(modules[n].weight.numel() for n in names)
    budget_bytes = budget.resolve(sum(float_costs), numel)
    scorer = Scorer(model, batches, eval_fn, higher_is_better, metric_name)
    t1 = time.perf_counter()
    if sensitivity == "measured":
        losses = _measured_losses(model, cands, grouped, batches, scorer, batches[0], progress)
    else:
        losses, _ = _hessian_losses(model, cands, grouped, configs, batches, n_probes)
    t2 = time.perf_counter()
    # each group's options: candidates that quantize it, plus float where asked for or where
    # no candidate applies (it then stays float, as the presets would leave it)
    options: list[list[tuple[str, int, float]]] = []
    for g in range(len(grouped)):
        opts = [(c.name, costs[c.name][g], losses[c.name][g]) for c in cands
                if c.recipe is not None and g in losses[c.name]]
        if any(c.recipe is None for c in cands) or not opts:
            opts.append((FLOAT, float_costs[g], 0.0))
        options.append(opts)
    units = to_units([[o[1] for o in opts] for opts in options], budget_bytes, max_units)
    # the table reaches the dearest assignment, so the frontier covers every size
    top = max(units.budget, sum(max(c) for c in units.costs))
    knap = Knapsack(units.costs, [[o[2] for o in opts] for opts in options], top)
    if not knap.feasible(units.budget):
        cheapest = sum(min(o[1] for o in opts) for opts in options)
        raise ConfigError("budget", budget.describe(), f"at least {cheapest} bytes for these "
                          "layers (each at its cheapest candidate)",
                          fix="raise the budget or add a smaller candidate")

    def decode(choice) -> tuple[dict[str, str], int, float]:
        assignment, cost, loss = {}, 0, 0.0
        for g, k in enumerate(choice):
            cand, c, lo = options[g][k]
            cost, loss = cost + c, loss + lo
            for n in grouped[g]:
                assignment[n] = cand
        return {n: assignment[n] for n in names}, cost, loss

    assignment, cost, pred_loss = decode(knap.solve(units.budget).choice)
    frontier = []
    for sol in knap.frontier():
        a, c, lo = decode(sol.choice)
        counts = {cand.name: sum(v == cand.name for v in a.values()) for cand in cands}
        frontier.append({"cost_bytes": c, "predicted_loss": lo, "counts": counts})
    uniform = {}
    for cand in cands:
        picks = [next((k for k, o in enumerate(opts) if o[0] == cand.name), None)
                 for opts in options]
        if all(p is not None for p in picks):
            _, c, lo = decode(picks)
            uniform[cand.name] = {"cost_bytes": c, "predicted_loss": lo}
    recipe = recipe_for(assignment, configs, f"searched:{budget.describe()}")
    measured = measure_recipe(model, recipe, batches, scorer)
    t3 = time.perf_counter()
    exact = sensitivity == "measured"
    table = {grouped[g][0]: {o[0]: {"bytes": o[1], "loss": o[2]} for o in opts}
             for g, opts in enumerate(options)}
    return SearchResult(
        recipe=recipe, assignment=assignment, candidates=[c.name for c in cands],
        metric_name=scorer.name, float_metric=scorer.float_metric, budget=budget.describe(),
        budget_bytes=budget_bytes, resolution_bytes=units.unit, cost_bytes=cost,
        float_layer_bytes=sum(float_costs), predicted_loss=pred_loss,
        predicted_metric=(scorer.float_metric - pred_loss if higher_is_better or eval_fn is None
                          else scorer.float_metric + pred_loss) if exact else None,
        measured_metric=measured["metric"], measured_loss=measured["loss"],
        model_bytes=measured["model_bytes"], model_float_bytes=measured["model_float_bytes"],
        sensitivity=sensitivity, groups=grouped, table=table, frontier=frontier,
        uniform=uniform, seconds={"costs": t1 - t0, "sensitivity": t2 - t1,
                                  "verify": t3 - t2})


def measure_recipe(model: nn.Module, recipe: Recipe, batches: list, scorer: Scorer) -> dict:
    """Prepare, calibrate on ``batches``, score; then convert for the real size."""
    qmodel = prepare(model, recipe, example_inputs=batches[0])
    with calibrate(qmodel):
        for batch in batches:
            _call(qmodel, batch)
    metric = scorer.metric(qmodel)
    size = estimate_model_size(convert(qmodel, inplace=True))
    return {"metric": metric, "loss": scorer.loss_of(metric),
            "model_bytes": size["quantized_bytes"], "model_float_bytes": size["float_bytes"]}
