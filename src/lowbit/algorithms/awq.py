"""AWQ: activation-aware per-input-channel weight scales, searched on a grid.

Lin, Tang, Tang, Yang, Dang, Gan & Han, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration" (MLSys 2024), § 3.2: with ``s = mean|X|^α`` (per input channel,
normalised by ``sqrt(max s · min s)``) the group's layers are quantized as
``Q(W·diag(s))·diag(s)⁻¹``; ``α`` is chosen on the grid ``0, 1/n, …, (n−1)/n`` to minimise
``‖X Wᵀ − X Q(W·diag(s))ᵀ/s‖²`` over the calibration rows (at most ``max_rows``, evenly
spaced).  The best scale is folded exactly into the producing norm (see
:mod:`lowbit.algorithms._fold`); a group with no foldable producer, or whose best ``α`` is 0,
keeps its weights.  Records ``awq_alpha``, ``awq_output_mse`` and ``awq_rtn_output_mse``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import all_reduce_, all_reduce_count, is_distributed, world_size
from ..errors import check_int_range
from ..nn.qat import weight_matrix
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


@register_algorithm
@dataclass(frozen=True)
class AWQ(Algorithm):
    """AWQ scale search (``grid`` values of α, at most ``max_rows`` calibration rows)."""

    name = "awq"
    grid: int = 20
    max_rows: int = 4096

    def __post_init__(self):
        check_int_range("AWQ.grid", self.grid, 1, 1000, fix="e.g. AWQ(grid=20)")
        check_int_range("AWQ.max_rows", self.max_rows, 1, 1 << 24, fix="e.g. 4096")

    def apply_block(self, ctx) -> None:
        for group in find_input_groups(ctx):
            if group.producer is None:
                for name in group.names:
                    record = ctx.record(name)
                    if record is not None:
                        record.metrics["awq_skipped"] = "no LayerNorm/RMSNorm producer"
                continue
            x = _rows(group.inputs, self.max_rows)
            weights = [weight_matrix(m.weight).detach().float() for m in group.layers]
            specs = [m.weight_quantizer.spec for m in group.layers]
            s, alpha, err, rtn = search_scales(x, weights, specs, self.grid)
            folded = alpha > 0 and fold_scales(ctx, group, s)
            for name in group.names:
                record = ctx.record(name)
                if record is not None:
                    record.metrics.update(awq_alpha=alpha if folded else 0.0,
                                          awq_output_mse=err if folded else rtn,
                                          awq_rtn_output_mse=rtn)
