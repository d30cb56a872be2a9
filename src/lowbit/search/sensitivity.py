"""One-layer-at-a-time sensitivity of a prepared, calibrated (fake-quant) model.

Two sweeps toggle the fake quantization of layers (``set_fake_quant``) on one prepared model,
so every layer keeps the ranges found by one calibration:

``quantize_only``  every layer float except one: the loss that layer causes alone.
``float_only``     every layer quantized except one: the loss recovered by keeping it float,
                   ``loss(all quantized) - loss(all but this one)``.

Losses come from a :class:`~lowbit.search.scoring.Scorer` (0 = as good as float). Each sweep
also returns the seconds it took. The model's fake quantization is switched back on for every
layer afterwards, also when scoring fails.

``float_only`` scores a model with (nearly) every layer quantized once per layer, so
re-quantizing every weight on every forward would dominate its cost. Given ``source``, the
float model the prepared one was made from, it *bakes* the weights (:func:`baked_weights`):
each layer's fake-quantized weight is computed once and written into the prepared model's
own weight tensor, the weight quantizer switched off; the layer kept float reads its weight
back from ``source``. Outputs are bit-identical, and no copy of the model is made (one
layer's weight at a time is computed); the float weights are copied back from ``source``
afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..model.prepare import quant_modules
from ..nn.qat import weight_matrix
from .scoring import Scorer

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class Sweep:
    """Losses of one sweep per layer name, the all-quantized loss and the time taken."""

    losses: dict[str, float]
    all_quantized: float
    seconds: float
    extra: dict = field(default_factory=dict)


def _modules(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Module]:
    mods = dict(quant_modules(model))
    if not mods:
        raise ConfigError("model", type(model).__name__, "a model prepared by lowbit.prepare "
                          "with at least one quantized layer", fix="prepare and calibrate the "
                          "model with a recipe that selects some layers")
    if names is None:
        return mods
    missing = [n for n in names if n not in mods]
    if missing:
        raise ConfigError("names", missing, f"quantized layers of the model ({sorted(mods)[:5]}"
                          f"{' ...' if len(mods) > 5 else ''})", fix="name layers the recipe "
                          "quantizes")
    return {n: mods[n] for n in names}


@contextlib.contextmanager
def fake_quant_restored(model: nn.Module) -> Iterator[dict[str, nn.Module]]:
    """Yield the model's fake-quant modules; switch all of them back on when done."""
    mods = dict(quant_modules(model))
    try:
        yield mods
    finally:
        for module in mods.values():
            module.set_fake_quant(True)


def quantize_only(model: nn.Module, scorer: Scorer, names: Sequence[str] | None = None,
                  progress: Progress | None = None) -> Sweep:
    """Loss with only one layer quantized, for each layer in ``names`` (default: all)."""
    chosen = _modules(model, names)
    start = time.perf_counter()
    losses = {}
    with fake_quant_restored(model) as mods:
        all_q = scorer.loss(model)
        for module in mods.values():
            module.set_fake_quant(False)
        for name, module in chosen.items():
            module.set_fake_quant(True)
            losses[name] = scorer.loss(model)
            module.set_fake_quant(False)
            if progress:
                progress(name)
    return Sweep(losses, all_q, time.perf_counter() - start)


def float_only(model: nn.Module, scorer: Scorer, names: Sequence[str] | None = None,
               progress: Progress | None = None, source: nn.Module | None = None) -> Sweep:
    """Loss recovered by keeping one layer float while all others stay quantized.

    ``source``: the float model ``model`` was prepared from; with it the weights are
    quantized once (:func:`baked_weights`) instead of on every forward.
    """
    chosen = _modules(model, names)
    start = time.perf_counter()
    recovered = {}
    with fake_quant_restored(model), baked_weights(model, source) as baked:
        all_q = scorer.loss(model)
        for name, module in chosen.items():
            baked.set_float(name, True)
            recovered[name] = all_q - scorer.loss(model)
            baked.set_float(name, False)
            if progress:
                progress(name)
    return Sweep(recovered, all_q, time.perf_counter() - start)


class BakedWeights:
    """Layers of a prepared model whose fake-quantized weights are held in place (see
    :func:`baked_weights`); :meth:`set_float` switches one layer to float and back."""

    def __init__(self, mods: dict[str, nn.Module], sources: dict[str, torch.Tensor]):
        self.mods = mods
        self.sources = sources          # layer -> its float weight in the source model

    @torch.no_grad()
    def bake(self, name: str) -> None:
        """Write the layer's fake-quantized weight into its weight; weight quantizer off."""
        module = self.mods[name]
        if name in self.sources:
            module.weight_quantizer.enabled = True
            w = module.weight
            w.copy_(module.weight_quantizer(weight_matrix(w)).reshape(w.shape))
            module.weight_quantizer.enabled = False

    @torch.no_grad()
    def unbake(self, name: str) -> None:
        """Copy the float weight back from the source model."""
        if name in self.sources:
            self.mods[name].weight.copy_(self.sources[name])

    def set_float(self, name: str, float_: bool) -> None:
        """Keep layer ``name`` float (True) or fake-quantized again (False)."""
        module = self.mods[name]
        if float_:
            self.unbake(name)
            module.set_fake_quant(False)
        else:
            module.set_fake_quant(True)
            self.bake(name)


def _bakeable(model: nn.Module, source: nn.Module | None) -> dict[str, torch.Tensor]:
    """Layer -> the source's float weight, for layers whose weight equals it exactly, is
    not shared with another quantized layer, and has a frozen weight quantizer."""
    if source is None:
        return {}
    mods = dict(quant_modules(model))
    counts: dict[int, int] = {}
    for module in mods.values():
        counts[id(module.weight)] = counts.get(id(module.weight), 0) + 1
    out = {}
    for name, module in mods.items():
        wq = module.weight_quantizer
        if wq is None or wq.observing or not wq.ready or counts[id(module.weight)] > 1:
            continue
        try:
            src = source.get_submodule(name).weight
        except AttributeError:
            continue
        w = module.weight
        if isinstance(src, torch.Tensor) and src is not w and src.shape == w.shape \
                and src.dtype == w.dtype and src.device == w.device and torch.equal(src, w):
            out[name] = src
    return out


@contextlib.contextmanager
def baked_weights(model: nn.Module, source: nn.Module | None) -> Iterator[BakedWeights]:
    """Inside, every bakeable layer of ``model`` holds its fake-quantized weight with the
    weight quantizer off (same outputs, one quantization per layer instead of one per
    forward); on exit the float weights are copied back from ``source`` and fake
    quantization is on. A layer is bakeable when its weight equals ``source``'s exactly
    (as after ``prepare``) and is not shared; others quantize on every forward as usual.
    Without ``source`` nothing is baked."""
    mods = dict(quant_modules(model))
    baked = BakedWeights(mods, _bakeable(model, source))
    try:
        for name in mods:
            baked.bake(name)
        yield baked
    finally:
        for name, module in mods.items():
            baked.unbake(name)
            module.set_fake_quant(True)
