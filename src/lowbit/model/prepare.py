"""prepare → calibrate: swap in fake-quant modules and find their ranges.

``prepare(model, recipe)`` returns a copy of ``model`` whose selected layers are
fake-quant modules (lowbit.nn) with observers; ``calibrate(model)`` is a
context manager under which forwards feed the observers (no grad) and after
which the ranges are frozen.  The prepared model also gets
``start_calibration()`` / ``end_calibration()`` methods.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import types
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from ..config import LayerConfig, resolve_fq_impl
from ..distributed.observers import reduce_model_observers
from ..errors import ConfigError, StateError
from ..nn.quantizer import TensorQuantizer
from ..nn.tables import QAT_MODULES
from ..recipe import Recipe, load_recipe
from ..records import LayerRecord
from .batches import split_batch
from .select import RoleMap, find_roles, select_layers
from .ties import share_quantizers

logger = logging.getLogger(__name__)

STATE_ATTR = "_lowbit_state"


class LowbitState:
    """What lowbit keeps on a prepared model: its recipe, ``fq_impl`` and layer records."""

    def __init__(self, recipe: Recipe, fq_impl: str, records: list[LayerRecord],
                 roles: RoleMap | None):
        self.recipe = recipe
        self.fq_impl = fq_impl
        self.records = records
        self.roles = roles
        self.calibrated = False
        self.converted = False

    def record(self, name: str) -> LayerRecord | None:
        return next((r for r in self.records if r.name == name), None)


def lowbit_state(model: nn.Module) -> LowbitState:
    """The :class:`LowbitState` of a prepared model (StateError if it was never prepared)."""
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise StateError(f"{type(model).__name__} has not been prepared by lowbit; "
                         "call lowbit.prepare(model, recipe) (or lowbit.quantize_model) first")
    return state


def quant_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every lowbit fake-quant module in ``model``."""
    qat_types = tuple(set(QAT_MODULES.values()))
    for name, module in model.named_modules():
        if isinstance(module, qat_types):
            yield name, module


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def alias_map(model: nn.Module) -> dict[int, list[str]]:
    """``id(module)`` -> every name it is registered under (a shared module has several)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return names


def swap_module(model: nn.Module, name: str, new: nn.Module,
                aliases: dict[int, list[str]] | None = None) -> None:
    """Replace the module at ``name`` by ``new`` under every name it is registered under,
    so that a module shared by two parents stays one module (``aliases``: from
    :func:`alias_map`, computed before any swap)."""
    old = model.get_submodule(name)
    for alias in (aliases or {}).get(id(old), [name]):
        _set_submodule(model, alias, new)


def prepare(model: nn.Module, recipe: Any, *, example_inputs: Any = None,
            fq_impl: str = "reference", inplace: bool = False,
            backend: str | None = None) -> nn.Module:
    """Swap the layers ``recipe`` selects for fake-quant modules with observers.

    recipe: a preset name, a :class:`Recipe`, a path to JSON/YAML, or "module:attr".
    example_inputs: one batch (tuple → positional, dict → keyword, else the single
    argument) used to find layer roles by execution order when the recipe uses roles.
    fq_impl: how fake quantization computes: "reference" (lowbit's autograd) or "fused"
    (PyTorch's fused fake-quant ops). ``backend`` is its deprecated old name ("native" =
    "fused").
    inplace: modify ``model`` itself instead of a deep copy.
    Returns the prepared model; its records are in ``lowbit_state(model).records``.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module",
                          fix="pass the float model itself")
    fq_impl = resolve_fq_impl(fq_impl, backend)
    if getattr(model, STATE_ATTR, None) is not None:
        raise StateError("this model was already prepared by lowbit; prepare the float model")
    recipe = load_recipe(recipe)
    if not inplace:
        model = copy.deepcopy(model)
    roles = _roles(model, recipe, example_inputs)
    configs, records = select_layers(model, recipe, roles)
    if "" in configs:  # the root object cannot be swapped for its fake-quant twin
        raise ConfigError("model", type(model).__name__, "a model that contains the layers "
                          "to quantize", fix="wrap a single layer, e.g. nn.Sequential(layer), "
                          "or use QuantizedLinear.from_linear(layer) for one Linear")
    attach(model, configs, recipe, fq_impl, records, roles)
    n_q = sum(r.action == "quantized" for r in records)
    logger.info("prepared %d layer(s) with recipe %r (fq_impl=%s)", n_q, recipe.name, fq_impl)
    return model


def attach(model: nn.Module, configs: dict[str, LayerConfig], recipe: Recipe, fq_impl: str,
           records: list[LayerRecord], roles: RoleMap | None) -> None:
    """Swap each named float layer for its fake-quant module and attach lowbit's state."""
    by_name = {r.name: r for r in records}
    aliases = alias_map(model)
    for name, config in configs.items():
        float_module = model.get_submodule(name)
        qat_cls = QAT_MODULES[type(float_module)]
        qmod = qat_cls.from_float(float_module, config, fq_impl=fq_impl)
        swap_module(model, name, qmod, aliases)
        record = by_name.get(name)
        if record is not None:
            record.fq_impl = fq_impl
            record.fq_fallback = qmod.fallback_reason
    share_quantizers(model)  # layers tied to one weight quantize it once
    setattr(model, STATE_ATTR, LowbitState(recipe, fq_impl, records, roles))
    model.start_calibration = types.MethodType(start_calibration, model)
    model.end_calibration = types.MethodType(end_calibration, model)


def _roles(model: nn.Module, recipe: Recipe, example_inputs: Any) -> RoleMap | None:
    if not recipe.uses_roles:
        return None
    if example_inputs is None:
        return find_roles(model)
    args, kwargs = split_batch(example_inputs)
    return find_roles(model, args, kwargs)


def _calibrate_in_eval_mode(model: nn.Module, stacklevel: int) -> None:
    """Switch a train-mode model to eval mode, with a warning: calibration must not update
    BatchNorm statistics or drop activations."""
    if model.training:
        warnings.warn(f"{type(model).__name__} is in train mode; lowbit calibrates in eval mode "
                      "(BatchNorm statistics kept, dropout off) and leaves it in eval mode",
                      UserWarning, stacklevel=stacklevel)
        model.eval()


def start_calibration(model: nn.Module) -> None:
    """Turn every observer on; forwards now record ranges (outputs stay float).  A model in
    train mode is switched to eval mode, with a warning (see :func:`calibrate`)."""
    state = lowbit_state(model)
    if state.converted:
        raise StateError("the model is already converted to integer storage; "
                         "calibrate the fake-quant model before lowbit.convert")
    _calibrate_in_eval_mode(model, stacklevel=3)
    for _, module in quant_modules(model):
        module.start_observing()


def end_calibration(model: nn.Module) -> None:
    """Freeze every observer's range into qparams and record each layer's ranges.

    Under ``torch.distributed`` (more than one rank) the activation observers are first
    reduced across ranks, so every rank freezes the ranges of all ranks' data
    (:mod:`lowbit.distributed.observers`)."""
    state = lowbit_state(model)
    reduce_model_observers(model)
    for name, module in quant_modules(model):
        module.freeze()
        record = state.record(name)
        if record is not None:
            record.metrics.update(_calibration_metrics(module.summary()))
    state.calibrated = True


def _calibration_metrics(summary: dict) -> dict:
    """The numbers of a module summary worth keeping in its record."""
    out = {}
    for role in ("weight", "act"):
        part = summary.get(role) or {}
        obs = part.get("observer") or {}
        if "sat_ratio" in obs:
            out[f"{role}_sat_ratio"] = obs["sat_ratio"]
        if "chosen" in obs:
            out[f"{role}_method_chosen"] = obs["chosen"]
    return out


@contextlib.contextmanager
def calibrate(model: nn.Module, max_batches: int | None = None):
    """Context manager: eval mode, observers on and no grad inside; ranges frozen on exit.

    A model in train mode is switched to eval mode first (with a warning), so BatchNorm
    statistics stay as trained and dropout is off while ranges are observed; the model stays
    in eval mode afterwards (``model.train()`` before quantization-aware training).
    max_batches: observe only the first N forwards of the root model (later
    forwards inside the block run with observers off).
    """
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ConfigError("max_batches", max_batches, "None or an integer >= 1",
                          fix="pass max_batches=None to observe every batch")
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module prepared by "
                          "lowbit.prepare", fix="calibrate(lowbit.prepare(model, recipe))")
    _calibrate_in_eval_mode(model, stacklevel=4)
    start_calibration(model)
    seen = [0]
    paused: list[tuple[TensorQuantizer, bool]] = []  # (quantizer, was observing)

    def count(_module, _inputs):
        seen[0] += 1
        if max_batches is not None and seen[0] == max_batches + 1:
            paused.extend((m, m.observing) for m in model.modules()
                          if isinstance(m, TensorQuantizer) and m.enabled)
            for quantizer, _ in paused:  # later forwards run float, observing nothing
                quantizer.observing, quantizer.enabled = False, False

    handle = model.register_forward_pre_hook(count)
    try:
        with torch.no_grad():
            yield model
    finally:
        handle.remove()
    for quantizer, observing in paused:
        # back to observing, so that freeze() uses this calibration's data (a quantizer
        # frozen by an earlier calibration would otherwise keep its old qparams)
        quantizer.enabled, quantizer.observing = True, observing
    end_calibration(model)


def to_float(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare` in place: fake-quant modules back to float ones, state removed."""
    state = lowbit_state(model)
    if state.converted:
        raise StateError("a converted model holds integer weights; to_float needs the "
                         "fake-quant model (keep it, or load the 'calibrated' checkpoint)")
    aliases = alias_map(model)
    for name, module in list(quant_modules(model)):
        swap_module(model, name, module.to_float(), aliases)
    for attr in (STATE_ATTR, "start_calibration", "end_calibration"):
        model.__dict__.pop(attr, None)
    return model
