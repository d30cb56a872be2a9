"""One-layer-at-a-time sensitivity of a prepared, calibrated (fake-quant) model.

Two sweeps toggle the fake quantization of layers (``set_fake_quant``) on one prepared model,
so every layer keeps the ranges found by one calibration:

``quantize_only``  every layer float except one: the loss that layer causes alone.
``float_only``     every layer quantized except one: the loss recovered by keeping it float,
                   ``loss(all quantized) - loss(all but this one)``.

Losses come from a :class:`~lowbit.search.scoring.Scorer` (0 = as good as float). Each sweep
also returns the seconds it took. The model's fake quantization is switched back on for every
layer afterwards, also when scoring fails.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from torch import nn

from ..errors import ConfigError
from ..model.prepare import quant_modules
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
               progress: Progress | None = None) -> Sweep:
    """Loss recovered by keeping one layer float while all others stay quantized."""
    chosen = _modules(model, names)
    start = time.perf_counter()
    recovered = {}
    with fake_quant_restored(model):
        all_q = scorer.loss(model)
        for name, module in chosen.items():
            module.set_fake_quant(False)
            recovered[name] = all_q - scorer.loss(model)
            module.set_fake_quant(True)
            if progress:
                progress(name)
    return Sweep(recovered, all_q, time.perf_counter() - start)
