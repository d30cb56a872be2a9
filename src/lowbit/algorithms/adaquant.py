"""AdaQuant: fit a layer's weights, step sizes and bias to its float output, given quantized
inputs.

Hubara, Nahshan, Hanani, Banner & Soudry, "Accurate Post Training Quantization With Small
Calibration Sets" (ICML 2021), § 3 (eq. 2): ``argmin_{ΔW, Δs} ‖W X − Q_{s+Δs}(W + ΔW) X̂‖²``,
solved per layer (or per block, as the runner gives units) by Adam with straight-through
rounding.  Here ``W' = W + s·V`` (``V`` in grid steps, starts at 0), the step is
``s' = s·exp(u)`` (``u`` per scale entry, starts at 0, so ``s'`` stays positive), and
``Q_{s'}(W') = s'·(clamp(round(W'/s') + z, qmin, qmax) − z)`` with the gradient of ``round``
passed straight through (the step's gradient is then LSQ's).  ``optimizer="sign"`` with
``max_offset=0.5`` is AutoRound's variant (Cheng et al., "Optimize Weight Rounding via
Signed Gradient Descent for the Quantization of LLMs", 2023): rounding offsets within half
a step and the step size, by signed gradient descent with a decaying step.  ``bias=True`` also fits an
additive bias correction.  The loss and the budget are
:mod:`lowbit.algorithms._runner_recon`'s.  At the end the weight becomes exactly ``Q_{s'}(W')`` and
the weight quantizer holds ``(s', z)``; a fit no better than plain rounding is dropped.

Records per layer: ``adaquant_output_mse`` next to ``adaquant_rtn_output_mse`` (the unit's
output), ``adaquant_iters``, ``adaquant_seconds``, ``adaquant_scale_change`` (mean
``|s'/s − 1|``), ``adaquant_unit`` and ``adaquant_kept``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.qat import weight_matrix
from ..primitives.affine import expand_param
from ..types import QParams
from ._runner_recon import (check_budget, check_target, float_targets, grid, param_name,
                     reconstruct, unit_mse, weight_layers)
from .base import Algorithm, register_algorithm


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` whose gradient is the identity (straight through)."""
    return x + (torch.round(x) - x).detach()


class _Fit:
    """The learnable state of one layer: ``V`` ``[O, K]``, ``u`` (the qparams' scale shape)
    and a bias delta."""

    def __init__(self, module: nn.Module, fit_bias: bool):
        self.module = module
        self.scale, self.zero, self.qp = grid(module)
        self.w = weight_matrix(module.weight).detach().float()
        self.v = nn.Parameter(torch.zeros_like(self.w))
        self.u = nn.Parameter(torch.zeros_like(self.qp.scale, dtype=torch.float32))
        bias = getattr(module, "bias", None)
        self.db = nn.Parameter(torch.zeros_like(bias, dtype=torch.float32)) \
            if fit_bias and bias is not None else None

    def step(self) -> torch.Tensor:
        """``s'`` expanded to ``[O, K]``."""
        s = self.qp.scale.float() * torch.exp(self.u)
        return expand_param(s, tuple(self.w.shape), self.qp.block_size).expand(self.w.shape)

    def weight(self) -> torch.Tensor:
        s, z, qt = self.step(), self.zero, self.qp.qtype
        q = torch.clamp(round_ste((self.w + self.scale * self.v) / s) + z, qt.qmin, qt.qmax)
        w = (q - z) * s
        return w.reshape(self.module.weight.shape).to(self.module.weight.dtype)

    def params(self, name: str) -> dict[str, torch.Tensor]:
        out = {param_name(name, "weight"): self.weight()}
        if self.db is not None:
            out[param_name(name, "bias")] = self.module.bias.detach() + self.db.to(
                self.module.bias.dtype)
        return out

    def qparams(self) -> QParams:
        s = (self.qp.scale.float() * torch.exp(self.u.detach())).to(self.qp.scale.dtype)
        return QParams(s, self.qp.zero_point, self.qp.qtype, self.qp.block_size)


@register_algorithm
@dataclass(frozen=True)
class AdaQuant(Algorithm):
    """AdaQuant on every calibrated lowbit Linear/Conv layer of each unit (module doc).

    iters: Adam steps per unit. seconds: wall-time budget per unit (None: no limit).
    lr: learning rate of ``V`` (grid steps). scale_lr: learning rate of ``u`` (log step).
    bias_lr: learning rate of the bias correction. weights / scale / bias: which of them
    to fit (at least one). optimizer: ``"adam"`` or ``"sign"`` (signed gradient descent with
    a linearly decaying step, as AutoRound; give it ``lr`` ≈ 1/iters). max_offset: clamp
    ``V`` to ±this many grid steps (0.5 with ``"sign"`` is AutoRound's rounding offset; None:
    unbounded). seed: picks the calibration call of each step.
    target: ``"float"`` (the float model's output of the unit) or ``"float_weights"``
    (float weights on the quantized inputs; see :mod:`lowbit.algorithms._runner_recon`).
    progress: a tqdm bar per unit (on a terminal).
    """

    name = "adaquant"
    wants_reference = True
    iters: int = 500
    seconds: float | None = None
    lr: float = 1e-3
    scale_lr: float = 1e-3
    bias_lr: float = 1e-3
    weights: bool = True
    scale: bool = True
    bias: bool = True
    optimizer: str = "adam"
    max_offset: float | None = None
    target: str = "float"
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        check_budget("AdaQuant", self.iters, self.seconds, self.lr)
        check_target("AdaQuant", self.target, self.optimizer)
        if self.max_offset is not None and (isinstance(self.max_offset, bool) or not isinstance(
                self.max_offset, (int, float)) or not self.max_offset > 0):
            raise ConfigError("AdaQuant.max_offset", self.max_offset, "None or a number of "
                              "grid steps > 0", fix="e.g. AdaQuant(max_offset=0.5)")
        check_budget("AdaQuant", self.iters, self.seconds, self.scale_lr)
        check_budget("AdaQuant", self.iters, self.seconds, self.bias_lr)
        flags = (self.weights, self.scale, self.bias)
        if not all(isinstance(f, bool) for f in flags) or not any(flags):
            raise ConfigError("AdaQuant weights/scale/bias", flags, "booleans, at least one "
                              "True", fix="e.g. AdaQuant(weights=True, scale=True, bias=True)")

    def _projection(self, fits: dict):
        """Clamps every ``V`` to ±``max_offset`` after a step (None when unbounded)."""
        if self.max_offset is None:
            return None
        bound = float(self.max_offset)

        def project() -> None:
            with torch.no_grad():
                for f in fits.values():
                    f.v.clamp_(-bound, bound)
        return project

    def apply_block(self, ctx) -> None:
        layers = weight_layers(ctx)
        if not layers:
            return
        fits = {n: _Fit(m, self.bias) for n, m in layers}
        groups = []
        if self.weights:
            groups.append({"params": [f.v for f in fits.values()], "lr": float(self.lr)})
        if self.scale:
            groups.append({"params": [f.u for f in fits.values()], "lr": float(self.scale_lr)})
        biases = [f.db for f in fits.values() if f.db is not None]
        if biases:
            groups.append({"params": biases, "lr": float(self.bias_lr)})

        def params() -> dict[str, torch.Tensor]:
            out = {}
            for n, f in fits.items():
                out.update(f.params(n))
            return out

        targets = float_targets(ctx, layers, self.target)
        rtn = unit_mse(ctx, targets, None, layers)
        fit = reconstruct(ctx, layers, targets, params, groups, iters=self.iters,
                          seconds=self.seconds, seed=self.seed + ctx.index, rtn_mse=rtn,
                          optimizer=self.optimizer, project=self._projection(fits),
                          progress=self.progress, desc=f"adaquant {ctx.name}")
        with torch.no_grad():
            final = params()
        mse = unit_mse(ctx, targets, final, layers)
        keep = fit.iters > 0 and mse < rtn
        unit = "layer" if layers[0][0] == "" else "block"
        for n, m in layers:
            f = fits[n]
            if keep:
                with torch.no_grad():
                    m.weight.copy_(final[param_name(n, "weight")])
                    if f.db is not None:
                        m.bias.copy_(final[param_name(n, "bias")])
                m.weight_quantizer.set_qparams(f.qparams())
            record = ctx.record(n)
            if record is not None:
                change = float((torch.exp(f.u.detach()) - 1).abs().mean()) if keep else 0.0
                record.metrics.update(adaquant_output_mse=min(mse, rtn),
                                      adaquant_rtn_output_mse=rtn, adaquant_iters=fit.iters,
                                      adaquant_seconds=fit.seconds, adaquant_scale_change=change,
                                      adaquant_unit=unit, adaquant_kept=bool(keep))
