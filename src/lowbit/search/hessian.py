"""Hutchinson estimates of the Hessian trace of each layer's weight block.

For a loss ``L(w)`` and one layer's weights ``w_l`` (``n_l`` numbers), Hutchinson's estimator
(Hutchinson 1990; used per layer by HAWQ-v2, Dong et al. 2020) is

    tr(H_ll) = E_v[ v_l^T (H v)_l ],   v with independent +-1 (Rademacher) entries,

and one Hessian-vector product ``H v`` with ``v`` drawn over *all* layers at once gives every
layer's term, because the cross blocks ``v_l^T H_lm v_m`` (l != m) have mean zero. ``H v`` is
computed exactly by double back-propagation (``autograd``) or, for models whose operators
have no second derivative, by central differences of gradients
(``finite_difference``: ``(g(w + eps v) - g(w - eps v)) / 2 eps`` with ``eps`` ``1e-3 x``
the RMS of all probed weights). ``method='auto'`` tries autograd and falls back.

The loss is ``loss_fn(model, batch)`` when given (e.g. cross-entropy with labels), otherwise
the mean squared error of the model's output to the float model's own output on the batch
(zero at the float weights, so its Hessian is the Gauss-Newton matrix ``2 J^T J / N``).

:func:`predicted_loss` turns a trace into the loss expected from a weight perturbation ``dW``:
``0.5 * tr(H_ll) / n_l * ||dW||^2`` (the quadratic term, with ``H_ll`` replaced by its average
diagonal), which ranks layers without quantizing them one at a time.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..model.batches import call_batch
from .scoring import first_tensor

logger = logging.getLogger(__name__)

METHODS = ("auto", "autograd", "finite_difference")
LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclass
class HessianTraces:
    """Per-layer trace estimates (mean over probes and batches), their standard errors,
    the numel of each weight, the method used, probes drawn and seconds taken."""

    trace: dict[str, float]
    stderr: dict[str, float]
    numel: dict[str, int]
    method: str
    n_probes: int
    seconds: float

    def mean_diagonal(self, name: str) -> float:
        """``tr(H_ll) / n_l``: the average curvature per weight of layer ``name``."""
        return self.trace[name] / self.numel[name]


def _rademacher(params: Sequence[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    return [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype)
            for p in params]


def _zeros_for_unused(grads, params):
    """A weight the loss does not reach (e.g. an unused pooler) has a zero gradient."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _draw(params, gen: torch.Generator, n: int):
    """``n`` Rademacher probes, each drawn when the loop reaches it."""
    return (_rademacher(params, gen) for _ in range(n))


def _hvp_autograd(loss_fn, params, probes, n_probes: int):
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    out = []
    for k, v in enumerate(probes):
        hv = torch.autograd.grad([grads[i] for i in used], [params[i] for i in used],
                                 grad_outputs=[v[i] for i in used], allow_unused=True,
                                 retain_graph=k < n_probes - 1) if used else []
        full = [None] * len(params)
        for i, h in zip(used, hv):
            full[i] = h
        full = _zeros_for_unused(full, params)
        out.append([float((vi * hvi).sum()) for vi, hvi in zip(v, full)])
    return out


def _grads(loss_fn, params):
    return _zeros_for_unused(torch.autograd.grad(loss_fn(), params, allow_unused=True), params)


def _hvp_finite_difference(loss_fn, params, probes):
    # one step for all layers, so that each probe estimates the same v^T H v as autograd
    sq = sum(float(p.detach().double().pow(2).sum()) for p in params)
    step = 1e-3 * math.sqrt(sq / sum(p.numel() for p in params)) or 1e-3
    eps = [step] * len(params)
    saved = [p.detach().clone() for p in params]
    out = []
    for v in probes:
        with torch.no_grad():
            for p, vi, e in zip(params, v, eps):
                p.add_(vi, alpha=e)
        plus = _grads(loss_fn, params)
        with torch.no_grad():
            for p, vi, e in zip(params, v, eps):
                p.add_(vi, alpha=-2 * e)
        minus = _grads(loss_fn, params)
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)  # exactly the weights we started from
        out.append([float((vi * (gp - gm)).sum()) / (2 * e)
                    for vi, gp, gm, e in zip(v, plus, minus, eps)])
    return out


def hutchinson_traces(model: nn.Module, weights: dict[str, torch.Tensor], batches: list,
                      loss_fn: LossFn | None = None, n_probes: int = 8, seed: int = 0,
                      method: str = "auto") -> HessianTraces:
    """Estimate ``tr(H_ll)`` for every weight in ``weights`` (name -> Parameter of ``model``).

    ``n_probes`` Rademacher vectors per batch; the estimate is the mean over all
    ``n_probes x len(batches)`` terms and ``stderr`` its standard error. The model's weights
    are the same before and after (finite differences restore a saved copy);
    ``requires_grad`` and training mode are restored.
    """
    if method not in METHODS:
        raise ConfigError("method", method, f"one of {METHODS}",
                          fix="'auto' uses autograd and falls back to finite differences")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ConfigError("n_probes", n_probes, "an integer >= 1", fix="e.g. n_probes=8")
    if not weights:
        raise ConfigError("weights", {}, "at least one named weight", fix="pass the layers' "
                          "weights, e.g. {name: module.weight}")
    names, params = list(weights), list(weights.values())
    flags = {p: p.requires_grad for p in model.parameters()}
    training = model.training
    start = time.perf_counter()
    samples: list[list[float]] = []
    used = "finite_difference" if method == "finite_difference" else "autograd"
    gen = torch.Generator().manual_seed(seed)
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        batch_loss = _batch_losses(model, batches, loss_fn)
        for i in range(len(batches)):
            # probes are drawn one at a time (one probe's memory, not n_probes'); the
            # generator state is kept so a fallback redraws exactly the same probes
            state = gen.get_state()
            loss_i = functools.partial(batch_loss, i)
            if used == "autograd":
                try:
                    samples += _hvp_autograd(loss_i, params, _draw(params, gen, n_probes),
                                             n_probes)
                    continue
                except RuntimeError as exc:
                    if method == "autograd":
                        raise
                    logger.info("Hessian: no double backward here (%s); using finite "
                                "differences", str(exc).splitlines()[0])
                    used = "finite_difference"
                    gen.set_state(state)
            samples += _hvp_finite_difference(loss_i, params, _draw(params, gen, n_probes))
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(training)
    cols = torch.tensor(samples, dtype=torch.float64)          # (probes * batches, layers)
    mean = cols.mean(0)
    err = cols.std(0, unbiased=True) / math.sqrt(cols.shape[0]) if cols.shape[0] > 1 \
        else torch.full_like(mean, float("nan"))
    return HessianTraces({n: float(m) for n, m in zip(names, mean)},
                         {n: float(e) for n, e in zip(names, err)},
                         {n: p.numel() for n, p in zip(names, params)}, used, n_probes,
                         time.perf_counter() - start)


def _batch_losses(model: nn.Module, batches: list, loss_fn: LossFn | None):
    """``loss(i)`` on batch ``i``: ``loss_fn`` or the MSE to the float outputs, taken now."""
    if loss_fn is not None:
        return lambda i: loss_fn(model, batches[i])
    with torch.no_grad():
        refs = [first_tensor(call_batch(model, b)).detach().float() for b in batches]

    def mse_to_float(i: int) -> torch.Tensor:
        out = first_tensor(call_batch(model, batches[i])).float()
        return torch.mean((out - refs[i]) ** 2)

    return mse_to_float


def predicted_loss(trace: float, numel: int, delta: torch.Tensor) -> float:
    """``0.5 * trace / numel * ||delta||^2``: the quadratic loss estimate of perturbation
    ``delta`` of a layer whose weight block has Hessian trace ``trace``."""
    return 0.5 * trace / numel * float(delta.detach().double().pow(2).sum())
