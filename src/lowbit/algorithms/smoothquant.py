"""SmoothQuant: move activation outliers into the weights before W8A8 quantization.

Xiao, Lin, Seznec, Wu, Demouth & Han, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models" (ICML 2023), eq. 4: per input channel ``j``
``s_j = max|X_j|^α / max|W_j|^(1−α)``, then ``Y = (X diag(s)⁻¹)(diag(s) W)``.  ``max|X_j|``
is taken over every calibration row the layers of a group receive (under
``torch.distributed``, the rows of every rank), ``max|W_j|`` over the column ``j`` of all
of them.  The scale is folded exactly into the producing norm or Linear (see
:mod:`lowbit.algorithms._fold`); groups with no exact fold keep their weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributed import all_reduce_
from ..errors import ConfigError
from ._fold import find_input_groups, fold_scales
from .base import Algorithm, register_algorithm


def smooth_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max|X|^α / max|W|^(1−α)`` per input channel ``[K]`` (both clamped at 1e-5)."""
    s = x_absmax.clamp_min(1e-5).pow(alpha) / w_absmax.clamp_min(1e-5).pow(1.0 - alpha)
    return s.clamp_min(1e-5)


@register_algorithm
@dataclass(frozen=True)
class SmoothQuant(Algorithm):
    """SmoothQuant with migration strength ``alpha`` (0: nothing moves, 1: all to weights).
    Records ``smoothquant_folded_into`` (the producer) or why a layer was left alone."""

    name = "smoothquant"
    alpha: float = 0.5

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("SmoothQuant.alpha", self.alpha, "a number in [0, 1]",
                              fix="e.g. SmoothQuant(alpha=0.5); larger moves more into weights")

    def apply_block(self, ctx) -> None:
        for group in find_input_groups(ctx):
            x_max = torch.stack([x.abs().amax(0) for x in group.inputs]).amax(0)  # [K]
            all_reduce_(x_max, "max")  # over every rank's rows under torch.distributed
            w_max = torch.cat([m.weight.detach().float() for m in group.layers]).abs().amax(0)
            s = smooth_scales(x_max, w_max, float(self.alpha))
            folded = fold_scales(ctx, group, s)
            for name in group.names:
                record = ctx.record(name)
                if record is None:
                    continue
                if folded:
                    record.metrics["smoothquant_folded_into"] = group.producer_name
                else:
                    record.metrics["smoothquant_skipped"] = (
                        "no norm or Linear producer of this input" if not group.foldable
                        else "folding would change the block's float output")
