"""Cross-layer equalisation (CLE): balance per-channel weight ranges of consecutive layers.

Nagel, van Baalen, Blankevoort & Welling, "Data-Free Quantization Through Weight
Equalization and Bias Correction" (ICCV 2019), §4.1.  For a pair ``y = W₂ f(W₁ x + b₁)`` with
``f`` positive-homogeneous, ``f(x / s) = f(x) / s`` for ``s > 0``, so dividing output channel
``i`` of layer 1 (``W₁[i]``, ``b₁[i]``) by ``sᵢ`` and multiplying input channel ``i`` of layer 2
(``W₂[:, i]``) by ``sᵢ`` leaves ``y`` unchanged.  With ``r₁ᵢ = max|W₁[i]|`` and
``r₂ᵢ = max|W₂[:, i]|``, eq. 10 picks ``sᵢ = √(r₁ᵢ / r₂ᵢ)``: both ranges become ``√(r₁ᵢ r₂ᵢ)``.
Chains of pairs are swept repeatedly until the scales stop moving.

Pairs come from the executed graph (:mod:`lowbit.algorithms._fold_graph`): a Conv1d/Conv2d/Linear
whose only consumer is an activation (ReLU, ReLU6, or none; ``nn.Identity`` such as a folded
BatchNorm is looked through) whose only consumer is another Conv/Linear of matching width.
ReLU6 is not scale-equivariant (``relu6(x/s) ≠ relu6(x)/s`` for ``x > 6``).  Our choice: a
ReLU6 in an equalised pair is replaced by :class:`lowbit.nn.clip.ChannelClip`, the per-channel
clip ``clamp(x, 0, 6/sᵢ)``, which is exactly ``relu6(x)/sᵢ`` — float output unchanged, and the
clip keeps bounding activations for quantization.  Any other activation ends the chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.clip import ChannelClip
from ._fold_graph import module_graph, set_module
from .base import Algorithm, register_algorithm

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_HOMOGENEOUS = (nn.ReLU, nn.ReLU6, ChannelClip)


@dataclass
class CLEPair:
    """Two layers equalised across an (optional) activation; ``scale`` the accumulated ``s``."""

    first: str
    second: str
    act: str | None
    scale: torch.Tensor | None = None


def _one_user(graph, name: str) -> str | None:
    call = graph[name]
    return call.users[0] if call.calls == 1 and len(call.users) == 1 else None


def find_cle_pairs(model: nn.Module) -> list[CLEPair]:
    """The equalisable pairs of ``model`` (see the module doc), in execution order."""
    graph = module_graph(model)
    pairs = []
    for name, call in graph.items():
        if not isinstance(call.module, _LAYERS) or call.calls != 1:
            continue
        act, nxt = None, _one_user(graph, name)
        while nxt in graph and _passes_through(graph[nxt].module):
            nxt = _one_user(graph, nxt)
        if nxt in graph and isinstance(graph[nxt].module, _HOMOGENEOUS):
            act, nxt = nxt, _one_user(graph, nxt)
        if nxt not in graph or graph[nxt].calls != 1 or len(graph[nxt].inputs) != 1:
            continue
        second = graph[nxt].module
        if not isinstance(second, _LAYERS) or _in_channels(second) != call.module.weight.shape[0]:
            continue
        if isinstance(call.module, nn.Linear) != isinstance(second, nn.Linear):
            continue  # a Linear's channel axis is the last one, a conv's the second
        pairs.append(CLEPair(name, nxt, act))
    return pairs


def _passes_through(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout)
                                               and not module.training)


def _in_channels(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _input_view(layer: nn.Module) -> tuple[torch.Tensor, int]:
    """``W₂`` as ``[groups, O/groups, C/groups, ...]`` and the group count, so that input
    channel ``i`` is ``view[i // (C/g), :, i % (C/g)]``."""
    w = layer.weight.detach()
    groups = getattr(layer, "groups", 1)
    return w.reshape(groups, w.shape[0] // groups, *w.shape[1:]), groups


def input_channel_absmax(layer: nn.Module) -> torch.Tensor:
    """``r₂ᵢ = max|W₂[:, i]|`` for every input channel ``i`` (grouped convs included)."""
    view, groups = _input_view(layer)  # [g, O/g, C/g, *k]
    per_group = view.abs().transpose(1, 2).reshape(groups, view.shape[2], -1).amax(-1)
    return per_group.reshape(-1)  # [C]


def _scale_inputs(layer: nn.Module, s: torch.Tensor) -> None:
    view, groups = _input_view(layer)
    shape = (groups, 1, view.shape[2]) + (1,) * (view.dim() - 3)
    layer.weight.data.copy_((view * s.reshape(shape).to(view.dtype)).reshape(layer.weight.shape))


def _scale_outputs(layer: nn.Module, s: torch.Tensor) -> None:
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.data.div_(s.reshape(shape).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.data.div_(s.to(layer.bias.dtype))


def equalize_pair(model: nn.Module, pair: CLEPair) -> torch.Tensor:
    """One equalisation step of ``pair`` in place; returns the step's scales ``s`` [C]."""
    first, second = model.get_submodule(pair.first), model.get_submodule(pair.second)
    r1 = first.weight.detach().abs().reshape(first.weight.shape[0], -1).amax(1).double()
    r2 = input_channel_absmax(second).double()
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-300)),
                    torch.ones_like(r1))
    with torch.no_grad():
        _scale_outputs(first, s)
        _scale_inputs(second, s)
        if pair.act is not None:
            act = model.get_submodule(pair.act)
            if isinstance(act, nn.ReLU6):
                act = ChannelClip.from_relu6(s.numel(), -1 if isinstance(first, nn.Linear) else 1)
                set_module(model, pair.act, act)
            if isinstance(act, ChannelClip):
                act.upper.div_(s.to(act.upper.dtype))
    pair.scale = s if pair.scale is None else pair.scale * s
    return s


def equalize(model: nn.Module, iterations: int = 20, tol: float = 1e-4) -> list[CLEPair]:
    """Cross-layer-equalise every pair of ``model`` in place, sweeping all pairs up to
    ``iterations`` times or until no scale moves by more than ``tol`` (relative).  Returns the
    pairs with their accumulated scales."""
    pairs = find_cle_pairs(model)
    for _ in range(iterations):
        moved = 0.0
        for pair in pairs:
            s = equalize_pair(model, pair)
            moved = max(moved, float((s.log().abs()).max()) if s.numel() else 0.0)
        if moved <= math.log1p(tol):
            break
    return pairs


@register_algorithm
@dataclass(frozen=True)
class CLE(Algorithm):
    """Cross-layer equalisation on the float model (before prepare; fold BatchNorms first).
    Records on both layers of a pair ``cle_with`` (the other layer) and ``cle_scale_min`` /
    ``cle_scale_max`` (the range of the accumulated ``s``)."""

    name = "cle"
    stage = "float"
    iterations: int = 20

    def __post_init__(self):
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) \
                or not 1 <= self.iterations <= 1000:
            raise ConfigError("CLE.iterations", self.iterations, "an integer in [1, 1000]",
                              fix="e.g. CLE(iterations=20)")

    def apply_float(self, model: nn.Module, calib_data: Any) -> dict[str, dict]:
        notes: dict[str, dict] = {}
        for pair in equalize(model, self.iterations):
            s = pair.scale if pair.scale is not None else torch.ones(1)
            info = {"cle_scale_min": float(s.min()), "cle_scale_max": float(s.max())}
            if pair.act is not None and isinstance(model.get_submodule(pair.act), ChannelClip):
                info["cle_relu6_as_clip"] = pair.act
            notes.setdefault(pair.first, {}).update(info, cle_with=pair.second)
            notes.setdefault(pair.second, {}).setdefault("cle_with_input", pair.first)
        return notes
