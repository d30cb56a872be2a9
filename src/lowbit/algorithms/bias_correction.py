"""Bias correction: remove the mean output shift that weight rounding causes.

Nagel, van Baalen, Blankevoort & Welling, "Data-Free Quantization Through Weight
Equalization and Bias Correction" (ICCV 2019), §4.2, in its empirical form (the expectation
is measured on calibration data instead of derived from BatchNorm statistics).  For a layer
``y = W x + b`` quantized to ``ŷ = Ŵ x̂ + b``, the per-output-channel shift
``E[ŷ − y] = E[(Ŵ − W) x̂]`` (``mode="weight"``: the rounding error ``ε = Ŵ − W`` applied to
the layer's own quantized input ``x̂``, expectation over calibration rows and positions) is
subtracted from the bias: ``b ← b − E[ε x̂]``.  ``mode="empirical"`` uses instead
``E[ŷ] − E[y_fp]`` with ``y_fp`` the float model's output of the layer on the same batches,
which also absorbs the shift of quantized inputs and of the layers before.

Layers are corrected one after another in call order, each measured on the inputs the
already-corrected layers before it produce.  A layer without a bias gets one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..model.batches import peek
from ._runner_layers import (channel_axis, channels_last_2d, fake_quant_off,
                             layers_in_call_order, stream)
from .base import Algorithm, register_algorithm

MODES = ("weight", "empirical")


class _Mean:
    """Running per-channel mean of ``[rows, C]`` tensors."""

    def __init__(self):
        self.total, self.count = None, 0

    def add(self, rows: torch.Tensor) -> None:
        s = rows.double().sum(0)
        self.total = s if self.total is None else self.total + s
        self.count += rows.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self.total / max(self.count, 1)


def weight_rounding_shift(layer: nn.Module, qmodel: nn.Module, calib_data: Any) -> torch.Tensor:
    """``E[(Ŵ − W) x̂]`` per output channel [C] of ``layer`` inside ``qmodel``, over every
    calibration batch (``x̂``: the layer's input after its activation quantizer)."""
    axis = channel_axis(layer)
    mean = _Mean()

    def add(x: torch.Tensor, _y: torch.Tensor) -> None:
        delta = (layer.quantized_weight() - layer.weight).detach()  # ε = Ŵ − W
        x_hat = layer.quantized_input(x)
        if isinstance(layer, nn.Linear):
            shift = nn.functional.linear(x_hat, delta)
        else:
            shift = layer._conv_forward(x_hat, delta, None)
        mean.add(channels_last_2d(shift, axis))

    stream(qmodel, layer, calib_data, add)
    return mean.value


def output_mean(model: nn.Module, layer: nn.Module, calib_data: Any) -> torch.Tensor:
    """``E[y]`` per output channel of ``layer`` as ``model`` runs it on ``calib_data``."""
    axis, mean = channel_axis(layer), _Mean()
    stream(model, layer, calib_data, lambda _x, y: mean.add(channels_last_2d(y, axis)))
    return mean.value


def subtract_from_bias(layer: nn.Module, shift: torch.Tensor) -> None:
    """``b ← b − shift`` (a zero bias is created first when the layer has none)."""
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(shift.numel(), dtype=layer.weight.dtype,
                                                  device=layer.weight.device),
                                      requires_grad=layer.weight.requires_grad)
        layer.bias.sub_(shift.to(layer.bias.dtype))


@register_algorithm
@dataclass(frozen=True)
class BiasCorrection(Algorithm):
    """Bias correction after calibration (see the module doc).  Records ``bias_correction``
    (the mode) and ``bias_correction_max_shift`` (largest |shift| removed) per layer."""

    name = "bias_correction"
    stage = "quantized"
    mode: str = "weight"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError("BiasCorrection.mode", self.mode, f"one of {MODES}",
                              fix="e.g. BiasCorrection(mode='weight')")

    def apply_quantized(self, qmodel: nn.Module, calib_data: Any, record) -> None:
        first, calib_data = peek(calib_data)
        calib_data = list(calib_data)
        reference = None
        if self.mode == "empirical":
            reference = copy.deepcopy(qmodel)
        with torch.no_grad():
            for name, layer in layers_in_call_order(qmodel, first):
                if self.mode == "weight":
                    shift = weight_rounding_shift(layer, qmodel, calib_data)
                else:
                    ref_layer = reference.get_submodule(name)
                    with fake_quant_off(reference):
                        fp = output_mean(reference, ref_layer, calib_data)
                    shift = output_mean(qmodel, layer, calib_data) - fp
                subtract_from_bias(layer, shift)
                rec = record(name)
                if rec is not None:
                    rec.metrics["bias_correction"] = self.mode
                    rec.metrics["bias_correction_max_shift"] = float(shift.abs().max())

