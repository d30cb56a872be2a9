"""BatchNorm reconstruction after quantization, in both forms of seed 003 §3.

* ``bn_reestimate`` — for a model that keeps its BatchNorms: their running mean and variance
  are re-estimated on the quantized model's own activations (the statistics are reset, every
  BatchNorm runs in train mode with a cumulative average over the calibration batches, and
  the model goes back to eval mode).  Weights and qparams are not touched.
* ``bn_affine`` — for a model whose BatchNorms were folded: per output channel ``k`` of a
  layer, the affine patch ``(a_k, c_k) = argmin E‖y_fp − (a ⊙ ŷ + c)‖²`` between the float
  model's layer output ``y_fp`` and the quantized model's ``ŷ`` on the calibration data.
  Least squares gives ``a = Cov(ŷ, y_fp) / Var(ŷ)``, ``c = E[y_fp] − a E[ŷ]``.  The patch is
  folded into the layer: ``W ← a ⊙ W`` (its weight qparams re-chosen from the new weights, so
  with per-channel scales the new grid is the old one times ``a``) and ``b ← a ⊙ b + c``.
  Layers are patched one after another in call order, each fitted on the outputs the
  already-patched layers before it produce.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..model.batches import call_batch, peek
from ..nn.qat import weight_matrix
from ._fold_graph import module_graph
from ._runner_layers import (channel_axis, channels_last_2d, fake_quant_off,
                             layers_in_call_order, paired_stream)
from .base import Algorithm, register_algorithm

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def reestimate_batchnorm(model: nn.Module, calib_data: Any) -> dict[str, nn.Module]:
    """Re-estimate every BatchNorm's running statistics on ``model``'s own activations over
    ``calib_data`` (cumulative average), in place.  Returns ``{name: BatchNorm}`` of those
    changed; the model's train/eval mode and each BatchNorm's momentum are restored."""
    bns = {n: m for n, m in model.named_modules()
           if isinstance(m, _BN_TYPES) and m.track_running_stats}
    if not bns:
        return {}
    was_training = model.training
    momenta = {n: m.momentum for n, m in bns.items()}
    model.eval()
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
        m.train()
    try:
        with torch.no_grad():
            for batch in calib_data:
                call_batch(model, batch)
    finally:
        for n, m in bns.items():
            m.momentum = momenta[n]
        model.train(was_training)
    return bns


@register_algorithm
@dataclass(frozen=True)
class BNReestimate(Algorithm):
    """BatchNorm re-estimation on the quantized model (a model that keeps its BatchNorms).
    Records ``bn_reestimate`` (the BatchNorm) and ``bn_reestimate_mean_shift`` (the largest
    |Δμ|/σ) on the layer feeding each BatchNorm (or a float record of the BatchNorm)."""

    name = "bn_reestimate"
    stage = "quantized"

    def apply_quantized(self, qmodel: nn.Module, calib_data: Any, record) -> None:
        before = {n: (m.running_mean.clone(), m.running_var.clone())
                  for n, m in qmodel.named_modules()
                  if isinstance(m, _BN_TYPES) and m.track_running_stats}
        changed = reestimate_batchnorm(qmodel, calib_data)
        try:
            graph = module_graph(qmodel)
        except ConfigError:
            graph = {}
        for name, bn in changed.items():
            mean, var = before[name]
            shift = float(((bn.running_mean - mean).abs() / var.add(bn.eps).sqrt()).max())
            inputs = graph[name].inputs if name in graph else []
            rec = record(inputs[0]) if len(inputs) == 1 else None
            rec = rec if rec is not None else record(name)
            if rec is not None:
                rec.metrics["bn_reestimate"] = name
                rec.metrics["bn_reestimate_mean_shift"] = shift


class _Moments:
    """Per-channel sums for the least-squares fit of ``y ≈ a ŷ + c``."""

    def __init__(self):
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, y: torch.Tensor, y_hat: torch.Tensor) -> None:  # both [rows, C]
        y, y_hat = y.double(), y_hat.double()
        for key, value in (("y", y), ("q", y_hat), ("qq", y_hat * y_hat), ("qy", y_hat * y)):
            s = value.sum(0)
            self.sums[key] = self.sums[key] + s if key in self.sums else s
        self.n += y.shape[0]

    def fit(self, a_min: float, a_max: float) -> tuple[torch.Tensor, torch.Tensor]:
        m = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        var_q = m["qq"] - m["q"] ** 2
        cov = m["qy"] - m["q"] * m["y"]
        ok = var_q > 1e-12 * m["qq"].clamp_min(1e-30)
        a = torch.where(ok, cov / var_q.clamp_min(1e-30), torch.ones_like(cov))
        a = a.clamp(a_min, a_max)
        return a, m["y"] - a * m["q"]


def fit_affine_patch(y_fp: torch.Tensor, y_hat: torch.Tensor, a_min: float = 0.5,
                     a_max: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, c)`` per column minimising ``‖y_fp − (a ŷ + c)‖²`` for ``[rows, C]`` tensors
    (``a`` clamped to ``[a_min, a_max]``; ``a = 1`` for a constant column)."""
    moments = _Moments()
    moments.add(y_fp, y_hat)
    return moments.fit(a_min, a_max)


def apply_affine_patch(layer: nn.Module, a: torch.Tensor, c: torch.Tensor) -> None:
    """Fold ``a ⊙ y + c`` into ``layer``: ``W ← a ⊙ W``, ``b ← a ⊙ b + c``; the weight
    qparams are re-chosen from the new weight."""
    with torch.no_grad():
        w = layer.weight
        w.copy_(w * a.to(w.dtype).reshape((-1,) + (1,) * (w.dim() - 1)))
        bias = layer.bias if layer.bias is not None else torch.zeros_like(c).to(w.dtype)
        new_bias = (bias.double() * a + c).to(w.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias, requires_grad=w.requires_grad)
        else:
            layer.bias.copy_(new_bias)
        layer.weight_quantizer.freeze(weight_matrix(w).detach())


@register_algorithm
@dataclass(frozen=True)
class BNAffine(Algorithm):
    """The least-squares per-channel affine patch (see the module doc), on the layers whose
    BatchNorm was folded (``layers="folded"``, the ones with a ``bn_fold`` record) or on every
    quantized layer (``layers="all"``).  Records ``bn_affine_a_min``/``_max`` and
    ``bn_affine_c_absmax`` per patched layer."""

    name = "bn_affine"
    stage = "quantized"
    layers: str = "folded"
    a_min: float = 0.5
    a_max: float = 2.0

    def __post_init__(self):
        if self.layers not in ("folded", "all"):
            raise ConfigError("BNAffine.layers", self.layers, "'folded' or 'all'",
                              fix="e.g. BNAffine(layers='all') for models without BatchNorm")
        if not 0 < self.a_min <= 1 <= self.a_max:
            raise ConfigError("BNAffine.a_min/a_max", (self.a_min, self.a_max),
                              "0 < a_min <= 1 <= a_max", fix="e.g. a_min=0.5, a_max=2.0")

    def apply_quantized(self, qmodel: nn.Module, calib_data: Any, record) -> None:
        first, calib_data = peek(calib_data)
        calib_data = list(calib_data)
        reference = copy.deepcopy(qmodel)
        with fake_quant_off(reference):
            for name, layer in layers_in_call_order(qmodel, first):
                rec = record(name)
                if self.layers == "folded" and (rec is None or "bn_fold" not in rec.metrics):
                    continue
                axis, moments = channel_axis(layer), _Moments()
                paired_stream(reference, reference.get_submodule(name), qmodel, layer,
                              calib_data, lambda y, q: moments.add(channels_last_2d(y, axis),
                                                                   channels_last_2d(q, axis)))
                a, c = moments.fit(float(self.a_min), float(self.a_max))
                apply_affine_patch(layer, a, c)
                if rec is not None:
                    rec.metrics["bn_affine_a_min"] = float(a.min())
                    rec.metrics["bn_affine_a_max"] = float(a.max())
                    rec.metrics["bn_affine_c_absmax"] = float(c.abs().max())
