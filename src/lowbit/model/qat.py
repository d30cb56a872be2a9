"""Quantization-aware fine-tuning, optionally distilled from the float teacher.

The fake-quant model trains like any module (straight-through rounding, LSQ step
sizes when the recipe asks for them); this helper only saves the boilerplate.
Distillation (Hinton et al. 2015): ``loss = (1-α)·task + α·D`` with D the KL
divergence between temperature-softened logits (scaled by T²) or the MSE between
outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, check_int_range
from .batches import call_batch

logger = logging.getLogger(__name__)

DISTILL = ("kl", "mse")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str,
                 temperature: float = 2.0) -> torch.Tensor:
    """KL on softened logits (× T²) or MSE on outputs between student and teacher."""
    if kind == "kl":
        t = temperature
        return F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                        reduction="batchmean", log_target=True) * t * t
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise ConfigError("distill", kind, f"one of {DISTILL}", fix="use 'kl' for logits, 'mse' otherwise")


def qat_finetune(model: nn.Module, data: Any, loss_fn: Callable | None = None, *,
                 teacher: nn.Module | None = None, distill: str | None = None,
                 alpha: float = 0.5, temperature: float = 2.0, epochs: int = 1,
                 lr: float = 1e-4, optimizer: torch.optim.Optimizer | None = None,
                 max_steps: int | None = None,
                 progress: Callable[[int, float], None] | None = None) -> list[float]:
    """Fine-tune a calibrated fake-quant model; returns the loss of every step.

    data: iterable of batches. With ``loss_fn`` a batch is ``(inputs, targets)`` and the
    task loss is ``loss_fn(model(inputs), targets)``; without it a batch is the model's
    input and the loss is pure distillation (``teacher`` and ``distill`` required).
    teacher/distill: the float model and "kl" (logits) or "mse" (outputs).
    alpha: weight of the distillation term when both losses are used.
    """
    if distill is not None and distill not in DISTILL:
        raise ConfigError("distill", distill, f"None or one of {DISTILL}",
                          fix="use 'kl' for classifier logits, 'mse' for embeddings")
    if (distill is None) != (teacher is None):
        raise ConfigError("teacher", type(teacher).__name__ if teacher is not None else None,
                          "a teacher exactly when distill is set",
                          fix="pass both teacher=float_model and distill='kl'|'mse', or neither")
    if loss_fn is None and teacher is None:
        raise ConfigError("loss_fn", None, "a task loss, or teacher+distill",
                          fix="pass loss_fn=nn.CrossEntropyLoss() or distill from the float model")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError("alpha", alpha, "a number in [0, 1]", fix="e.g. alpha=0.5")
    check_int_range("epochs", epochs, 1, 1_000_000, fix="e.g. epochs=1")
    if max_steps is not None:
        check_int_range("max_steps", max_steps, 1, 1 << 62, fix="pass None or a positive count")
    if optimizer is None and (isinstance(lr, bool) or not isinstance(lr, (int, float))
                              or not lr > 0):
        raise ConfigError("lr", lr, "a number > 0", fix="e.g. lr=1e-4")
    if epochs > 1 and isinstance(data, Iterator):
        raise ConfigError("data", type(data).__name__,
                          "a re-iterable collection (list, DataLoader) when epochs > 1",
                          fix="a generator or iterator runs out after one epoch; pass "
                              "list(batches) or a DataLoader, or epochs=1")
    optimizer = optimizer or torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                              lr=lr)
    if teacher is not None:
        teacher.eval()
    model.train()
    losses: list[float] = []
    for _ in range(epochs):
        for batch in data:
            inputs, targets = (batch[0], batch[1]) if loss_fn is not None else (batch, None)
            out = call_batch(model, inputs)
            loss = loss_fn(out, targets) if loss_fn is not None else out.new_zeros(())
            if teacher is not None:
                with torch.no_grad():
                    t_out = call_batch(teacher, inputs)
                d = distill_loss(out, t_out, distill, temperature)
                loss = d if loss_fn is None else (1 - alpha) * loss + alpha * d
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(len(losses), losses[-1])
            if max_steps is not None and len(losses) >= max_steps:
                model.eval()
                return losses
    model.eval()
    return losses
