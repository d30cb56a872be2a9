"""Cross-layer equalisation: exact in float, ranges balanced, ReLU6 handled exactly."""

import pytest
import torch
from torch import nn

from lowbit.algorithms import ALGORITHMS, CLE, equalize, fold_batchnorm
from lowbit.algorithms.cle import find_cle_pairs, input_channel_absmax
from lowbit.errors import ConfigError
from lowbit.nn.clip import ChannelClip

from .toy_cnn import ToyCNN, images


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def _out_range(layer):
    return layer.weight.detach().abs().reshape(layer.weight.shape[0], -1).amax(1)


def test_input_channel_absmax_matches_a_loop_for_grouped_convs():
    for groups in (1, 2, 8):
        conv = nn.Conv2d(8, 4 * groups, 3, groups=groups)
        w = conv.weight.detach()
        per_group_out, per_group_in = w.shape[0] // groups, 8 // groups
        expected = torch.stack([
            w[(i // per_group_in) * per_group_out:(i // per_group_in + 1) * per_group_out,
              i % per_group_in].abs().max() for i in range(8)])
        torch.testing.assert_close(input_channel_absmax(conv), expected, rtol=0, atol=0)


def test_pairs_come_from_the_graph_through_folded_bns():
    model = ToyCNN()
    fold_batchnorm(model)
    pairs = [(p.first, p.second, p.act) for p in find_cle_pairs(model)]
    # pw -> fc crosses a pool and a flatten: not a pair
    assert pairs == [("conv", "dw", "act"), ("dw", "pw", "dw_act"), ("fc", "head", "fc_act")]


def test_equalize_is_exact_in_float_and_balances_ranges():
    model = ToyCNN()
    x = images(1, 16)[0]
    fold_batchnorm(model)
    reference = model(x).detach()
    before = float(_out_range(model.dw).max() / _out_range(model.dw).min())
    pairs = equalize(model, iterations=100)
    assert _rel(model(x), reference) <= 1e-5
    after = float(_out_range(model.dw).max() / _out_range(model.dw).min())
    assert after < before / 3
    # the last pair swept is balanced exactly: r1 == r2 per channel
    torch.testing.assert_close(_out_range(model.fc), input_channel_absmax(model.head))
    assert isinstance(model.act, ChannelClip), "the ReLU6 in a pair becomes a per-channel clip"
    assert isinstance(model.dw_act, nn.ReLU) and isinstance(model.fc_act, nn.ReLU)
    assert all(p.scale is not None for p in pairs)


def test_relu6_saturation_is_kept_exact():
    """Inputs far beyond 6 exercise the clip; a plain ReLU6 would change the output."""
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU6(), nn.Conv2d(4, 3, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([50.0, 0.1, 1.0, 5.0]).reshape(4, 1, 1, 1))
    x = torch.randn(8, 2, 4, 4) * 5
    reference = model(x).detach()
    assert (model[0](x) > 6).any()
    equalize(model)
    assert isinstance(model[1], ChannelClip)
    assert _rel(model(x), reference) <= 1e-5


def test_the_algorithm_writes_both_layers_of_a_pair():
    assert ALGORITHMS["cle"] is CLE and CLE.stage == "float"
    model = ToyCNN()
    fold_batchnorm(model)
    notes = CLE().apply_float(model, images(1))
    assert notes["conv"]["cle_with"] == "dw" and notes["conv"]["cle_relu6_as_clip"] == "act"
    assert notes["head"]["cle_with_input"] == "fc"
    assert notes["dw"]["cle_scale_min"] <= notes["dw"]["cle_scale_max"]
    with pytest.raises(ConfigError, match="CLE.iterations"):
        CLE(iterations=0)
