"""BatchNorm folding: ``BN(W x + b) = (s ⊙ W) x + s ⊙ (b − μ) + β``, ``s = γ / √(σ² + ε)``.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference" (CVPR 2018), §3.2.  Every Conv1d/Conv2d/Linear → BatchNorm pair is found in
the executed graph (:mod:`lowbit.algorithms._fold_graph`), not in module order; the layer's weight
rows are scaled by ``s`` (one per output channel), its bias becomes ``s ⊙ (b − μ) + β`` (a bias
is created when the layer had none) and the BatchNorm is replaced by ``nn.Identity``.

A BatchNorm is kept, with the reason, when: it is in train mode (its statistics still
change), it tracks no running statistics, it is called more than once, its input is not the
output of a Conv1d/Conv2d/Linear, that output has another consumer, the channel counts differ,
or (with an example batch) the fold would move the model's float output by more than ``tol``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..model.batches import peek
from ._fold_check import model_output, relative_change
from ._fold_graph import module_graph, set_module
from .base import Algorithm, register_algorithm

#: Largest relative change of the model's float output one fold may cause.
FOLD_TOLERANCE = 1e-5
_BN_FOR = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Linear: nn.BatchNorm1d}
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class BNFoldResult:
    """One BatchNorm: ``layer`` it was (or would be) folded into, whether it was, and why not."""

    bn: str
    layer: str | None
    folded: bool
    reason: str = ""


def bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` with ``BN(y) = s ⊙ y + t`` in eval mode: ``s = γ/√(σ²+ε)``, ``t = β − μ s``."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    s = gamma / torch.sqrt(var + bn.eps)  # [C]
    return s, beta - mean * s


def fold_bn_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` into ``layer`` (Conv/Linear) in place: ``W ← s ⊙ W`` per output
    channel, ``b ← s ⊙ b + t`` (computed in float64, stored in the layer's dtype)."""
    s, t = bn_scale_shift(bn)
    w = layer.weight
    with torch.no_grad():
        shape = (-1,) + (1,) * (w.dim() - 1)
        w.copy_((w.double() * s.reshape(shape)).to(w.dtype))
        bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(s)
        new_bias = (bias * s + t).to(w.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias, requires_grad=w.requires_grad)
        else:
            layer.bias.copy_(new_bias)


def _why_not(model: nn.Module, bn_name: str, graph) -> tuple[str | None, str]:
    """(producer layer or None, reason it cannot fold or "")."""
    call = graph[bn_name]
    bn = call.module
    producer = call.inputs[0] if len(call.inputs) == 1 else None
    layer = graph[producer].module if producer in graph else None
    name = producer if layer is not None else None
    if bn.training:
        return name, "BatchNorm is in train mode (statistics still change); call model.eval()"
    if bn.running_mean is None or bn.running_var is None:
        return name, "BatchNorm tracks no running statistics"
    if call.calls > 1:
        return name, f"BatchNorm is called {call.calls} times"
    if layer is None or type(layer) not in _BN_FOR:
        return name, f"its input comes from {call.inputs}, not from a Conv1d/Conv2d/Linear"
    if not isinstance(bn, _BN_FOR[type(layer)]):
        return name, f"{type(layer).__name__} followed by {type(bn).__name__}"
    producer_call = graph[producer]
    if producer_call.calls > 1:
        return name, f"{producer} is called {producer_call.calls} times"
    if producer_call.users != [bn_name]:
        return name, f"{producer}'s output has {len(producer_call.users)} consumers " \
                     f"({', '.join(producer_call.users)})"
    out_channels = layer.weight.shape[0]
    if bn.num_features != out_channels:
        return name, f"{bn.num_features} BatchNorm channels vs {out_channels} layer outputs"
    return name, ""


def fold_batchnorm(model: nn.Module, example_inputs: Any = None,
                   tol: float = FOLD_TOLERANCE) -> list[BNFoldResult]:
    """Fold every foldable BatchNorm of ``model`` into the layer before it, in place.

    example_inputs: one batch; when given, each fold is kept only if the model's float
    output moves by at most ``tol`` (relative), otherwise undone and reported.
    Returns one :class:`BNFoldResult` per BatchNorm the forward calls.
    """
    graph = module_graph(model)
    reference = model_output(model, example_inputs) if example_inputs is not None else None
    results = []
    for bn_name, call in graph.items():
        if not isinstance(call.module, _BN_TYPES):
            continue
        layer_name, reason = _why_not(model, bn_name, graph)
        if reason:
            results.append(BNFoldResult(bn_name, layer_name, False, reason))
            continue
        layer, bn = model.get_submodule(layer_name), call.module
        saved_w = layer.weight.detach().clone()
        saved_b = None if layer.bias is None else layer.bias.detach().clone()
        fold_bn_into(layer, bn)
        set_module(model, bn_name, nn.Identity())
        if reference is not None:
            change = relative_change(reference, model_output(model, example_inputs))
            if not change <= tol:
                with torch.no_grad():
                    layer.weight.copy_(saved_w)
                    if saved_b is None:
                        layer.bias = None
                    else:
                        layer.bias.copy_(saved_b)
                set_module(model, bn_name, bn)
                results.append(BNFoldResult(bn_name, layer_name, False,
                                            f"folding moved the float output by {change:.1e} "
                                            f"(> {tol:.0e})"))
                continue
        results.append(BNFoldResult(bn_name, layer_name, True))
    return results


@register_algorithm
@dataclass(frozen=True)
class BNFold(Algorithm):
    """Fold BatchNorms into the Conv/Linear before them (runs on the float model, before
    prepare).  Records ``bn_fold`` (the BatchNorm folded) on the layer, or ``bn_fold_kept``
    (``"<bn>: why"``) on the layer (or on the BatchNorm when no layer feeds it)."""

    name = "bn_fold"
    stage = "float"
    tol: float = FOLD_TOLERANCE

    def __post_init__(self):
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) \
                or not self.tol > 0:
            raise ConfigError("BNFold.tol", self.tol, "a positive number",
                              fix="e.g. BNFold(tol=1e-5)")

    def apply_float(self, model: nn.Module, calib_data: Any) -> dict[str, dict]:
        first, _ = peek(calib_data)
        notes: dict[str, dict] = {}
        for r in fold_batchnorm(model, first, float(self.tol)):
            if r.folded:
                notes.setdefault(r.layer, {})["bn_fold"] = r.bn
            else:
                notes.setdefault(r.layer or r.bn, {})["bn_fold_kept"] = f"{r.bn}: {r.reason}"
        return notes
