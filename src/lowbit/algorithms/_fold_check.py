"""Helpers shared by the whole-model algorithms: float output of a model, and a relative
distance, used to prove that a float-exact rewrite (a fold, an equalisation) is exact."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..model.batches import call_batch


def first_tensor(out: Any) -> torch.Tensor:
    """The first tensor in a model's output (a tensor, a tuple/list, or a dict/ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"no tensor in the model's output ({type(out).__name__})")


def model_output(model: nn.Module, batch: Any) -> torch.Tensor:
    """``model(batch)`` (no grad, eval mode kept as it is), first output tensor, float32."""
    with torch.no_grad():
        return first_tensor(call_batch(model, batch)).detach().float()


def relative_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """``‖after − before‖ / ‖before‖`` (0 when both are zero)."""
    return float((after - before).norm() / before.norm().clamp_min(1e-30))
