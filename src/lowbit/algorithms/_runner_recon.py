"""Output reconstruction shared by AdaRound and AdaQuant: fit a unit's quantized weights to
its float output.

A *unit* is what the runner hands an algorithm: one layer (layer-wise mode) or one block.
Its inputs come from the model with the earlier units already quantized (so they are
*quantized* inputs, activation quantizers included).  Its *targets* are, by default
(``target="float"``), the float model's outputs of the unit (AdaRound's "asymmetric"
reconstruction, which also corrects the error the earlier units left), or, with
``target="float_weights"`` (or when the runner keeps no reference), the unit's outputs with
its weight quantizers off on the same quantized inputs.  An algorithm
describes its learnable weights by a function returning ``{parameter name inside the unit:
tensor}``; :func:`reconstruct` runs the unit with those tensors in place of its parameters
(``torch.func.functional_call``), one captured call per iteration (picked by a seeded
generator), minimizing the mean squared error to the target (divided by plain rounding's, so
that one learning rate fits every layer) plus an optional regularizer, with Adam (or signed
gradient descent).  It stops
after ``iters`` iterations or ``seconds`` of wall time, whichever comes first; same inputs
and seed give the same bytes when ``iters`` is the limit (a wall-time limit depends on the
machine and its load).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from ..errors import ConfigError, check_int_range
from ..nn.qat import QuantConv1d, QuantConv2d, QuantLinear
from ..primitives.affine import expand_param
from ..types import QParams
from ._runner import _block_dtype, _hidden_of

#: The clock the time budget reads (tests replace it with a fake one).
_clock = time.perf_counter

QUANT_LAYERS = (QuantLinear, QuantConv1d, QuantConv2d)


def check_budget(owner: str, iters, seconds, lr) -> None:
    """Validate the shared options ``iters``, ``seconds`` and ``lr`` of ``owner``."""
    check_int_range(f"{owner}.iters", iters, 0, 10**7, fix=f"e.g. {owner}(iters=200)")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not seconds >= 0):
        raise ConfigError(f"{owner}.seconds", seconds, "None or a number of seconds >= 0",
                          fix=f"e.g. {owner}(seconds=10.0) per layer or block")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1e3:
        raise ConfigError(f"{owner}.lr", lr, "a learning rate > 0", fix=f"e.g. {owner}(lr=1e-2)")


def weight_layers(ctx) -> list[tuple[str, nn.Module]]:
    """The unit's lowbit Linear/Conv layers with a calibrated (frozen) weight quantizer."""
    return [(n, m) for n, m in ctx.layers(QUANT_LAYERS)
            if m.weight_quantizer is not None and m.weight_quantizer.is_frozen
            and not m.weight_quantizer.spec.dynamic]


def grid(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, QParams]:
    """``(scale, zero)`` expanded to the weight matrix ``[O, K]`` and the layer's qparams."""
    qp = module.weight_quantizer.qparams()
    w = module.weight
    shape = (w.shape[0], w[0].numel())
    scale = expand_param(qp.scale.float(), shape, qp.block_size).expand(shape)
    zero = expand_param(qp.zero_point, shape, qp.block_size).float().expand(shape)
    return scale, zero, qp


def param_name(layer_name: str, attr: str) -> str:
    """The name of ``attr`` of the layer ``layer_name`` inside the unit."""
    return f"{layer_name}.{attr}" if layer_name else attr


class weights_off:
    """Context manager: the given layers' weight quantizers pass weights through."""

    def __init__(self, layers):
        self.quantizers = [m.weight_quantizer for _, m in layers]

    def __enter__(self):
        self.saved = [q.enabled for q in self.quantizers]
        for q in self.quantizers:
            q.enabled = False

    def __exit__(self, *exc):
        for q, was in zip(self.quantizers, self.saved):
            q.enabled = was


def unit_mse(ctx, targets: list[torch.Tensor], weights: dict[str, torch.Tensor] | None,
             layers) -> float:
    """Mean squared error of the unit's outputs (with ``weights`` in place, or its own
    fake-quantized weights when None) against ``targets``, over every captured call."""
    total, count = 0.0, 0
    with torch.no_grad():
        outs = ctx.run() if weights is None else \
            [_forward(ctx, i, weights, layers) for i in range(len(targets))]
        for out, target in zip(outs, targets):
            total += float((out.float() - target).pow(2).sum())
            count += target.numel()
    return total / max(count, 1)


#: What the quantized unit is fitted to (the ``target`` option of AdaRound and AdaQuant).
TARGETS = ("float", "float_weights")


def float_targets(ctx, layers, target: str = "float") -> list[torch.Tensor]:
    """The outputs the unit is fitted to (float32): ``"float"``, the float model's outputs
    of this unit (float inputs too) when the runner keeps reference inputs; otherwise, and
    for ``"float_weights"``, the unit's outputs with float weights on its quantized inputs."""
    if target == "float":
        ref = ctx.run_reference()
        if ref is not None:
            return [t.float() for t in ref]
    with weights_off(layers):
        return [t.float() for t in ctx.run()]


OPTIMIZERS = ("adam", "sign")


def _sign_step(groups: list[dict], decay: float) -> None:
    with torch.no_grad():
        for g in groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.sub_(torch.sign(p.grad), alpha=g["lr"] * decay)


def check_target(owner: str, target, optimizer: str = "adam") -> None:
    """Validate the ``target`` and ``optimizer`` options of ``owner``."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"{owner}.optimizer", optimizer, f"one of {list(OPTIMIZERS)}",
                          fix=f"e.g. {owner}(optimizer='adam')")
    if target not in TARGETS:
        raise ConfigError(f"{owner}.target", target, f"one of {list(TARGETS)}",
                          fix=f"e.g. {owner}(target='float')")


def _forward(ctx, i: int, weights: dict[str, torch.Tensor], layers) -> torch.Tensor:
    inputs = ctx.inputs
    args, kwargs = inputs.call(i, _block_dtype(ctx.module) if inputs.act_dtype else None)
    with weights_off(layers):
        return _hidden_of(functional_call(ctx.module, weights, args, kwargs))


@dataclass
class Fit:
    """What :func:`reconstruct` did: iterations run, and the fit's seconds."""

    iters: int
    seconds: float


def reconstruct(ctx, layers, targets: list[torch.Tensor],
                weights: Callable[[], dict[str, torch.Tensor]], groups: list[dict], *,
                iters: int, seconds: float | None, seed: int, rtn_mse: float,
                regularizer: Callable[[float], torch.Tensor] | None = None,
                optimizer: str = "adam", project: Callable[[], None] | None = None,
                progress: bool = True, desc: str = "reconstruct") -> Fit:
    """Minimize the unit's output MSE to ``targets`` (divided by ``rtn_mse``) plus
    ``regularizer(t)``, where ``t`` in [0, 1] is the fraction of the budget used, over the
    parameter ``groups`` (``torch.optim`` groups with ``lr``); see the module doc.

    optimizer: ``"adam"`` or ``"sign"`` (signed gradient descent, ``p −= lr·(1 − t)·sign(∂)``,
    the optimizer AutoRound uses).  project: called after every step (e.g. to clamp)."""
    params = [p for g in groups for p in g["params"]]
    if not params or iters == 0 or not targets:
        return Fit(0, 0.0)
    opt = torch.optim.Adam(groups) if optimizer == "adam" else None
    gen = torch.Generator().manual_seed(int(seed))
    norm = 1.0 / max(rtn_mse, 1e-30)
    from tqdm import tqdm

    bar = tqdm(total=iters, desc=desc, leave=False, disable=None if progress else True)
    t0 = _clock()
    done = 0
    try:
        with torch.enable_grad():
            while done < iters:
                used = _clock() - t0
                if seconds is not None and used >= seconds:
                    break
                t = max(done / iters, used / seconds if seconds else 0.0)
                i = int(torch.randint(len(targets), (1,), generator=gen))
                out = _forward(ctx, i, weights(), layers)
                loss = (out.float() - targets[i]).pow(2).mean() * norm
                if regularizer is not None:
                    loss = loss + regularizer(t)
                for p in params:
                    p.grad = None
                loss.backward()
                if opt is not None:
                    opt.step()
                else:
                    _sign_step(groups, 1.0 - t)
                if project is not None:
                    project()
                done += 1
                bar.update(1)
    finally:
        bar.close()
    return Fit(done, _clock() - t0)
