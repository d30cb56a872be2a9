"""AdaRound: learn, per weight, whether to round up or down.

Nagel, Amjad, van Baalen, Louizos & Blankevoort, "Up or Down? Adaptive Rounding for
Post-Training Quantization" (ICML 2020), § 4.  With the layer's calibrated grid ``(s, z)``,
each weight is written ``w/s = ⌊w/s⌋ + r`` and quantized as
``ŵ = s·(clamp(⌊w/s⌋ + h(V) + z, qmin, qmax) − z)`` where ``h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)``
is the rectified sigmoid (``ζ = 1.1``, ``γ = −0.1``; eq. 23) and ``V`` starts where
``h(V) = r`` (plain rounding's soft value).  ``V`` is fitted with Adam to minimize the unit's
output MSE against its float output on quantized inputs (:mod:`lowbit.algorithms._runner_recon`;
units are layers or blocks, as the runner gives them) plus ``λ·mean(1 − |2h(V) − 1|^β)``
(eq. 24), which pushes every ``h`` to 0 or 1 (the loss's MSE is divided by plain
rounding's, so ``λ`` here is not the paper's 0.01: 10 lets every ``h`` settle within a few
hundred steps); the regularizer is off for the first
``warmup`` fraction of the budget, then ``β`` falls linearly from ``beta[0]`` to ``beta[1]``.
The final rounding is hard: ``⌊w/s⌋ + [V ≥ 0]`` (``h ≥ ½``), so every code is the floor or
the ceiling of ``w/s`` (clamped to the grid).  The weight becomes exactly the dequantized codes
and the grid is unchanged, so convert stores those codes.

Records per layer: ``adaround_output_mse`` (hard rounding) next to
``adaround_rtn_output_mse`` (plain rounding), both of the unit's output; ``adaround_iters``,
``adaround_seconds``, ``adaround_flipped`` (the fraction of codes that differ from plain
rounding), ``adaround_unit`` (``layer`` or ``block``) and ``adaround_kept`` (False when the
fitted rounding was no better than plain rounding on the calibration data and was dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.qat import weight_matrix
from ._runner_recon import (check_budget, check_target, float_targets, grid, param_name,
                     reconstruct, unit_mse, weight_layers)
from .base import Algorithm, register_algorithm

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1)`` (AdaRound eq. 23)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def init_logits(rest: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = rest`` for ``rest`` in [0, 1)."""
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)


class _Rounding:
    """The learnable rounding of one layer: ``floor``, grid and logits ``V`` (all ``[O, K]``)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.scale, self.zero, qp = grid(module)
        self.qtype = qp.qtype
        x = weight_matrix(module.weight).detach().float() / self.scale
        self.floor = torch.floor(x)
        self.logits = nn.Parameter(init_logits(x - self.floor))
        self.rtn = torch.round(x)  # plain rounding (before clamping), for the flip count

    def weight(self, h: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(self.floor + h + self.zero, self.qtype.qmin, self.qtype.qmax)
        w = (q - self.zero) * self.scale
        return w.reshape(self.module.weight.shape).to(self.module.weight.dtype)

    def soft(self) -> torch.Tensor:
        return self.weight(rectified_sigmoid(self.logits))

    def up(self) -> torch.Tensor:
        """1 where the hard rounding goes up (``h(V) ≥ ½``, i.e. ``V ≥ 0``)."""
        return (self.logits.detach() >= 0).float()

    def hard(self) -> torch.Tensor:
        return self.weight(self.up())


@register_algorithm
@dataclass(frozen=True)
class AdaRound(Algorithm):
    """AdaRound on every calibrated lowbit Linear/Conv layer of each unit (module doc).

    iters: Adam steps per unit. seconds: wall-time budget per unit (None: no limit; the run
    stops at whichever comes first). lr: Adam's learning rate for ``V``. reg: the
    regularizer's weight ``λ``. beta: ``β`` at the start and end of the annealing. warmup:
    fraction of the budget without regularizer. seed: picks the calibration call of each
    step. target: ``"float"`` (the float model's output of the unit) or ``"float_weights"``
    (float weights on the quantized inputs; see :mod:`lowbit.algorithms._runner_recon`).
    progress: a tqdm bar per unit (on a terminal).
    """

    name = "adaround"
    wants_reference = True
    iters: int = 500
    seconds: float | None = None
    lr: float = 0.1
    reg: float = 10.0
    beta: tuple = (20.0, 2.0)
    warmup: float = 0.2
    target: str = "float"
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        check_budget("AdaRound", self.iters, self.seconds, self.lr)
        check_target("AdaRound", self.target)
        beta = tuple(self.beta) if isinstance(self.beta, (list, tuple)) else None
        if beta is None or len(beta) != 2 or not all(isinstance(b, (int, float)) and b > 0
                                                      for b in beta):
            raise ConfigError("AdaRound.beta", self.beta, "two positive numbers (start, end)",
                              fix="e.g. AdaRound(beta=(20, 2))")
        object.__setattr__(self, "beta", tuple(float(b) for b in beta))
        for field, value in (("reg", self.reg), ("warmup", self.warmup)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or (field == "warmup" and value >= 1):
                raise ConfigError(f"AdaRound.{field}", value, "a number >= 0 (warmup < 1)",
                                  fix="e.g. AdaRound(reg=0.01, warmup=0.2)")

    def to_dict(self) -> dict:
        """As :meth:`Algorithm.to_dict`, ``beta`` as a list (JSON's form)."""
        return {**super().to_dict(), "beta": list(self.beta)}

    def regularizer(self, roundings: list[_Rounding]):
        """``t ↦ λ·mean(1 − |2h − 1|^β(t))`` over every weight (0 during the warmup)."""
        count = sum(r.logits.numel() for r in roundings)

        def reg(t: float) -> torch.Tensor:
            if t < self.warmup or self.reg == 0:
                return torch.zeros(())
            frac = (t - self.warmup) / (1.0 - self.warmup)
            beta = self.beta[0] + (self.beta[1] - self.beta[0]) * frac
            total = sum((1 - (2 * rectified_sigmoid(r.logits) - 1).abs().pow(beta)).sum()
                        for r in roundings)
            return self.reg * total / count
        return reg

    def apply_block(self, ctx) -> None:
        layers = weight_layers(ctx)
        if not layers:
            return
        roundings = {n: _Rounding(m) for n, m in layers}
        targets = float_targets(ctx, layers, self.target)
        rtn = unit_mse(ctx, targets, None, layers)
        fit = reconstruct(
            ctx, layers, targets,
            lambda: {param_name(n, "weight"): r.soft() for n, r in roundings.items()},
            [{"params": [r.logits for r in roundings.values()], "lr": float(self.lr)}],
            iters=self.iters, seconds=self.seconds, seed=self.seed + ctx.index, rtn_mse=rtn,
            regularizer=self.regularizer(list(roundings.values())), progress=self.progress,
            desc=f"adaround {ctx.name}")
        hard = {param_name(n, "weight"): r.hard() for n, r in roundings.items()}
        mse = unit_mse(ctx, targets, hard, layers)
        unit = "layer" if layers[0][0] == "" else "block"
        keep = fit.iters > 0 and mse < rtn  # a fit no better than plain rounding is dropped
        for n, m in layers:
            r = roundings[n]
            flipped = float(((r.floor + r.up()) != r.rtn).float().mean()) if keep else 0.0
            if keep:
                with torch.no_grad():
                    m.weight.copy_(hard[param_name(n, "weight")])
            record = ctx.record(n)
            if record is not None:
                record.metrics.update(adaround_output_mse=min(mse, rtn),
                                      adaround_rtn_output_mse=rtn, adaround_iters=fit.iters,
                                      adaround_seconds=fit.seconds, adaround_flipped=flipped,
                                      adaround_unit=unit, adaround_kept=bool(keep))
