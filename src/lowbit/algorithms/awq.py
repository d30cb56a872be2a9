"""AWQ: activation-aware per-input-channel weight scales, searched on a grid.

Lin, Tang, Tang, Yang, Dang, Gan & Han, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration" (MLSys 2024), § 3.2: with ``s = mean|X|^α`` (per input channel,
normalised by ``sqrt(max s · min s)``) the group's layers are quantized as
``Q(W·diag(s))·diag(s)⁻¹``; ``α`` is chosen on the grid ``0, 1/n, …, (n−1)/n`` to minimise
``‖X Wᵀ − X Q(W·diag(s))ᵀ/s‖²`` over the calibration rows (at most ``max_rows``, evenly
spaced).  The best scale is folded exactly into the producing norm or Linear (see
:mod:`lowbit.algorithms._fold`); a group with no exact fold, or whose best ``α`` is 0, keeps
its weights.  Records ``awq_alpha``, ``awq_folded_into``, ``awq_output_mse`` and
``awq_rtn_output_mse``.

Weight clipping (§ 3.3 of the paper's released method; :func:`search_clip`): for each layer
(whether or not its group was scaled) and each output row and input group, the range is
shrunk to ``r·max|w|`` for ``r`` on a grid from 1 down to ``1 − max_shrink``; the ``r`` with the
least output error ``‖X_g (W_g − Q(clamp(W_g, ±r·max|W_g|)))ᵀ‖²`` on the calibration rows
of that group's inputs wins, and the weight is clamped to it (so any later step, GPTQ
included, chooses its qparams from the clipped weight).  Records ``awq_clip_mean_ratio``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import all_reduce_, all_reduce_count, is_distributed, world_size
from ..errors import ConfigError, check_int_range
from ..nn.qat import weight_matrix
from ..types import PerChannel, PerGroup
from ..nn.quantizer import TensorQuantizer
from ._fold import find_input_groups, fold_scales
from .base import Algorithm, register_algorithm


def _fake_quant(w: torch.Tensor, spec) -> torch.Tensor:
    """``w [O, K]`` rounded with qparams chosen from ``w`` itself under ``spec``."""
    q = TensorQuantizer(spec.replace(learnable=False))
    q.freeze(w)
    return q(w)


def _rows(inputs: list[torch.Tensor], max_rows: int) -> torch.Tensor:
    """At most ``max_rows`` evenly spaced rows (under ``torch.distributed``: per rank, an
    equal part of ``max_rows``)."""
    x = torch.cat(inputs)  # [N, K]
    max_rows = -(-max_rows // world_size()) if is_distributed() else max_rows
    if x.shape[0] > max_rows:
        x = x[torch.linspace(0, x.shape[0] - 1, max_rows).long()]
    return x


def candidate_scales(x_mean: torch.Tensor, grid: int) -> list[tuple[float, torch.Tensor]]:
    """``(alpha, s)`` for ``alpha = 0, 1/grid, ..., (grid-1)/grid`` (``s = 1`` at 0)."""
    out = [(0.0, torch.ones_like(x_mean))]
    for i in range(1, grid):
        alpha = i / grid
        s = x_mean.clamp_min(1e-8).pow(alpha)
        out.append((alpha, (s / (s.max() * s.min()).sqrt()).clamp_min(1e-4)))
    return out


def search_scales(x: torch.Tensor, weights: list[torch.Tensor], specs: list, grid: int
                  ) -> tuple[torch.Tensor, float, float, float]:
    """``(s, alpha, best mse, plain rounding's mse)`` for inputs ``x [N, K]`` and the group's
    weights ``[O_i, K]`` with their specs (see the module doc).  Under ``torch.distributed``
    ``mean|X|`` and the candidates' squared errors are summed over every rank's rows."""
    ref = [x @ w.t() for w in weights]  # [N, O_i]
    x_mean = all_reduce_(x.abs().sum(0), "sum") / all_reduce_count(x.shape[0])  # [K]
    candidates = candidate_scales(x_mean, grid)
    sse = torch.zeros(len(candidates), dtype=torch.float64)  # summed squared errors
    for c, (_, s) in enumerate(candidates):
        for w, spec, y in zip(weights, specs, ref):
            wq = _fake_quant(w * s, spec) / s  # [O_i, K]
            sse[c] += float((x @ wq.t() - y).pow(2).sum())
    errors = (all_reduce_(sse, "sum") / all_reduce_count(sum(y.numel() for y in ref))).tolist()
    rtn = best_err = errors[0]
    best, best_alpha = candidates[0][1], 0.0
    for (alpha, s), err in zip(candidates[1:], errors[1:]):
        if err < best_err:
            best, best_alpha, best_err = s, alpha, err
    return best, best_alpha, best_err, rtn


def _groups_of(spec, in_features: int) -> int | None:
    """Input columns per clipping group: the spec's group, the whole row for per-channel
    specs, None (no clipping) for ranges shared across rows."""
    g = spec.granularity
    if isinstance(g, PerGroup) and g.axis in (1, -1) and in_features % g.size == 0:
        return g.size
    if isinstance(g, PerChannel) and g.axis == 0:
        return in_features
    return None


def search_clip(x: torch.Tensor, w: torch.Tensor, spec, grid: int, max_shrink: float
                ) -> torch.Tensor:
    """Per output row and input group, the clipping ratio ``r [O, K/g]`` (see the module doc)
    for inputs ``x [N, K]`` and weight ``w [O, K]``; all ones when ``spec`` shares ranges
    across rows or its groups do not divide ``K``.  Under ``torch.distributed`` the errors
    are summed over the ranks, so every rank picks the same ratios."""
    O, K = w.shape
    g = _groups_of(spec, K)
    if g is None or K % g:  # shared ranges, or a ragged last group: no clipping
        return torch.ones(O, 1)
    G = K // g
    xg = x.reshape(-1, G, g)  # [N, G, g]
    wg = w.reshape(O, G, g)
    amax = wg.abs().amax(-1, keepdim=True)  # [O, G, 1]
    best_err = torch.full((O, G), float("inf"))
    best = torch.ones(O, G)
    for i in range(grid + 1):
        r = 1.0 - max_shrink * i / grid
        clipped = torch.maximum(torch.minimum(wg, r * amax), -r * amax).reshape(O, K)
        d = (w - _fake_quant(clipped, spec)).reshape(O, G, g)
        err = torch.einsum("ngj,ogj->gon", xg, d).pow(2).sum(-1).t()  # [O, G]
        err = all_reduce_(err, "sum")  # every rank's rows (a no-op in one process)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, r), best)
    return best


def apply_clip(w: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``w [O, K]`` clamped to ``±ratio·max|w|`` per row and group (``ratio [O, G]``)."""
    O, K = w.shape
    G = ratio.shape[1]
    wg = w.reshape(O, G, K // G)
    bound = wg.abs().amax(-1, keepdim=True) * ratio.unsqueeze(-1)
    return torch.maximum(torch.minimum(wg, bound), -bound).reshape(O, K)


@register_algorithm
@dataclass(frozen=True)
class AWQ(Algorithm):
    """AWQ scale search (``grid`` values of α, at most ``max_rows`` calibration rows) and
    weight clipping (``clip_grid`` ratios down to ``1 − clip_max_shrink`` on at most
    ``clip_rows`` rows; ``clip_grid=0`` turns it off)."""

    name = "awq"
    grid: int = 20
    max_rows: int = 4096
    clip_grid: int = 10
    clip_max_shrink: float = 0.5
    clip_rows: int = 512

    def __post_init__(self):
        check_int_range("AWQ.grid", self.grid, 1, 1000, fix="e.g. AWQ(grid=20)")
        check_int_range("AWQ.max_rows", self.max_rows, 1, 1 << 24, fix="e.g. 4096")
        check_int_range("AWQ.clip_grid", self.clip_grid, 0, 1000, fix="e.g. 10, or 0 for none")
        check_int_range("AWQ.clip_rows", self.clip_rows, 1, 1 << 24, fix="e.g. 512")
        if isinstance(self.clip_max_shrink, bool) or not isinstance(
                self.clip_max_shrink, (int, float)) or not 0.0 <= self.clip_max_shrink < 1.0:
            raise ConfigError("AWQ.clip_max_shrink", self.clip_max_shrink, "a number in [0, 1)",
                              fix="e.g. AWQ(clip_max_shrink=0.5)")

    def apply_block(self, ctx) -> None:
        for group in find_input_groups(ctx):
            x = _rows(group.inputs, self.max_rows)
            weights = [weight_matrix(m.weight).detach().float() for m in group.layers]
            specs = [m.weight_quantizer.spec for m in group.layers]
            folded, alpha = False, 0.0
            if group.foldable:
                s, alpha, err, rtn = search_scales(x, weights, specs, self.grid)
                folded = alpha > 0 and fold_scales(ctx, group, s)
                if folded:
                    x = x / s
            for name, m in zip(group.names, group.layers):
                record = ctx.record(name) or _NoRecord()
                if not group.foldable:
                    record.metrics["awq_skipped"] = "no norm or Linear producer of this input"
                elif not folded:
                    record.metrics["awq_skipped"] = ("best alpha is 0" if alpha == 0 else
                                                     "no exact fold for this input")
                else:
                    record.metrics.update(awq_alpha=alpha, awq_output_mse=err,
                                          awq_rtn_output_mse=rtn,
                                          awq_folded_into=group.producer_name)
                if self.clip_grid:
                    self._clip(m, x, record)

    def _clip(self, module, x: torch.Tensor, record) -> None:
        w = weight_matrix(module.weight).detach().float()
        spec = module.weight_quantizer.spec
        ratio = search_clip(x[:self.clip_rows] if x.shape[0] <= self.clip_rows else
                            x[torch.linspace(0, x.shape[0] - 1, self.clip_rows).long()],
                            w, spec, self.clip_grid, float(self.clip_max_shrink))
        if bool((ratio < 1).any()):
            with torch.no_grad():
                module.weight.copy_(apply_clip(w, ratio).reshape(module.weight.shape)
                                    .to(module.weight.dtype))
            module.weight_quantizer.freeze(weight_matrix(module.weight).detach())
        record.metrics["awq_clip_mean_ratio"] = float(ratio.mean())


class _NoRecord:
    def __init__(self):
        self.metrics = {}
