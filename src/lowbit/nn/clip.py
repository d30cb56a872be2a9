"""``ChannelClip``: ``clamp(x, 0, upper_c)`` with a per-channel upper bound.

ReLU6 is not scale-equivariant: ``relu6(x / s) != relu6(x) / s`` when ``x > 6``.  Cross-layer
equalisation divides a channel by ``s`` before the activation and multiplies the next layer
by ``s``; to stay exact it replaces a ReLU6 by ``ChannelClip`` with ``upper = 6 / s``, since
``clamp(x / s, 0, 6 / s) = relu6(x) / s`` for every ``s > 0``.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelClip(nn.Module):
    """``y = clamp(x, 0, upper[c])`` along ``axis`` (1 for conv outputs, -1 for Linear).

    upper: a 1-D tensor, one bound per channel (a buffer, saved with the model).
    """

    def __init__(self, upper: torch.Tensor, axis: int = 1):
        super().__init__()
        self.register_buffer("upper", upper.detach().clone().float())
        self.axis = int(axis)

    @classmethod
    def from_relu6(cls, channels: int, axis: int = 1) -> "ChannelClip":
        """The ChannelClip equal to ``nn.ReLU6`` on ``channels`` channels."""
        return cls(torch.full((channels,), 6.0), axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.axis] = -1
        upper = self.upper.to(x.dtype).reshape(shape)
        return torch.minimum(x.clamp_min(0), upper)

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}, axis={self.axis}"
