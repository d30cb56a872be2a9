"""ChannelClip: the per-channel clip that keeps ReLU6 exact under channel scaling."""

import torch
from torch import nn

from lowbit.nn.clip import ChannelClip


def test_from_relu6_equals_relu6():
    x = torch.randn(3, 5, 4, 4) * 10
    torch.testing.assert_close(ChannelClip.from_relu6(5)(x), nn.ReLU6()(x), rtol=0, atol=0)


def test_scaled_bound_equals_scaled_relu6_on_both_axes():
    s = torch.tensor([0.25, 1.0, 3.0, 10.0])
    x = torch.randn(6, 4, 3) * 20
    clip = ChannelClip(6.0 / s, axis=1)
    torch.testing.assert_close(clip(x / s.reshape(1, 4, 1)),
                               nn.functional.relu6(x) / s.reshape(1, 4, 1))
    rows = torch.randn(7, 4) * 20
    torch.testing.assert_close(ChannelClip(6.0 / s, axis=-1)(rows / s),
                               nn.functional.relu6(rows) / s)


def test_bound_is_a_saved_buffer():
    clip = ChannelClip(torch.tensor([1.0, 2.0]))
    assert "upper" in clip.state_dict() and "channels=2" in repr(clip)
