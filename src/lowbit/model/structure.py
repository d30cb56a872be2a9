"""Replay, on a fresh float model, the module changes a float-stage algorithm made, so that a
checkpoint of a folded or equalised model loads into the architecture the user has.

The layer records say what changed: ``bn_fold`` (a BatchNorm folded into this layer: the
BatchNorm becomes ``nn.Identity`` and the layer gets a bias), ``cle_relu6_as_clip`` (a ReLU6
became a :class:`~lowbit.nn.clip.ChannelClip`), ``bias_correction`` / ``bn_affine_a_min``
(a layer without bias got one).  The values come from the checkpoint's weights afterwards.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.clip import ChannelClip
from ..records import LayerRecord

_NEEDS_BIAS = ("bn_fold", "bias_correction", "bn_affine_a_min")


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def replay_structure(model: nn.Module, records: list[LayerRecord]) -> None:
    """Apply to ``model`` (float, in place) the module swaps ``records`` describe."""
    for record in records:
        metrics = record.metrics
        try:
            layer = model.get_submodule(record.name)
        except AttributeError:
            continue
        if "bn_fold" in metrics:
            _set(model, metrics["bn_fold"], nn.Identity())
        clip = metrics.get("cle_relu6_as_clip")
        if clip is not None and isinstance(model.get_submodule(clip), nn.ReLU6):
            axis = -1 if isinstance(layer, nn.Linear) else 1
            _set(model, clip, ChannelClip.from_relu6(layer.weight.shape[0], axis))
        if any(k in metrics for k in _NEEDS_BIAS) and getattr(layer, "bias", 0) is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0],
                                                  dtype=layer.weight.dtype,
                                                  device=layer.weight.device))
