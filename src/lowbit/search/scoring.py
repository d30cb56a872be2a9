"""How good a quantized model is: a user metric, or fidelity of its outputs to the float model.

A :class:`Scorer` is built once from the float model and a fixed list of batches. Its
``metric(model)`` is ``eval_fn(model)`` when one is given (accuracy, cosine, perplexity, ...;
``higher_is_better`` says which way is good) and otherwise the mean cosine similarity between
the model's outputs and the float model's, row by row, over the batches (1.0 for the float
model). ``loss(model)`` is how much worse the model is than float, ``float_metric - metric``
(or the reverse when lower is better): 0 for float, larger when worse. Losses of small,
independent perturbations roughly add up, which is what the bit allocation assumes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..model.batches import call_checked, check_module

DEFAULT_METRIC = "cosine_to_float"


def first_tensor(out: Any) -> torch.Tensor:
    """The first floating tensor of a model output (a tensor, tuple/list, dict or HF output)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("last_hidden_state", "logits"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) \
        else ()
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    raise InputError(f"the model returned a {type(out).__name__} with no floating tensor; "
                     "wrap it so that forward returns the output tensor, or pass eval_fn")


def as_batches(data: Any, max_batches: int | None = None, field: str = "calib_data") -> list:
    """``data`` (an iterable of batches) as a list of at most ``max_batches`` batches."""
    if data is None or isinstance(data, (torch.Tensor, str, bytes)) or callable(data) \
            or not isinstance(data, Iterable):
        raise ConfigError(field, type(data).__name__, "an iterable of batches (a list of tensors, "
                          "tuples or dicts)", fix=f"pass e.g. {field}=[x1, x2] (one tensor per "
                          "batch) or a DataLoader of inputs")
    out = []
    for batch in data:
        if max_batches is not None and len(out) >= max_batches:
            break
        out.append(batch)
    if not out:
        raise ConfigError(field, "an empty iterable", "at least one batch",
                          fix="pass a few representative input batches")
    return out


def _rows(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().float()
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)


class Scorer:
    """A model's metric and its loss against the float model (see the module docstring)."""

    def __init__(self, float_model: nn.Module, batches: list,
                 eval_fn: Callable[[nn.Module], float] | None = None,
                 higher_is_better: bool = True, metric_name: str | None = None):
        check_module(float_model)
        if eval_fn is not None and not callable(eval_fn):
            raise ConfigError("eval_fn", type(eval_fn).__name__, "a callable eval_fn(model) -> "
                              "float, or None", fix="pass e.g. eval_fn=lambda m: accuracy(m)")
        if not isinstance(higher_is_better, bool):
            raise ConfigError("higher_is_better", higher_is_better, "True or False",
                              fix="True for accuracy or cosine, False for loss or perplexity")
        self.batches = batches
        self.eval_fn = eval_fn
        self.higher_is_better = higher_is_better if eval_fn is not None else True
        default = getattr(eval_fn, "__name__", "") if eval_fn else DEFAULT_METRIC
        self.name = metric_name or (default if default.isidentifier() else "metric")
        self._reference = None if eval_fn is not None else self.outputs(float_model)
        self.float_metric = self.metric(float_model)

    def outputs(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's outputs (first tensor, one row per sample) on every batch."""
        with torch.no_grad():
            return [_rows(first_tensor(call_checked(model, b, i)))
                    for i, b in enumerate(self.batches)]

    def metric(self, model: nn.Module) -> float:
        """``eval_fn(model)``, or the mean row cosine of its outputs to the float model's."""
        if self.eval_fn is not None:
            with torch.no_grad():
                value = self.eval_fn(model)
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ConfigError("eval_fn", type(value).__name__, "a function returning a "
                                  "number", fix="return a float, e.g. the accuracy") from None
        cos = [torch.nn.functional.cosine_similarity(out, ref, dim=1, eps=1e-12)
               for out, ref in zip(self.outputs(model), self._reference)]
        return float(torch.cat(cos).double().mean())

    def loss_of(self, metric: float) -> float:
        """How much worse ``metric`` is than the float model's (0 = as good)."""
        diff = self.float_metric - metric
        return diff if self.higher_is_better else -diff

    def loss(self, model: nn.Module) -> float:
        """:meth:`loss_of` the model's :meth:`metric`."""
        return self.loss_of(self.metric(model))
