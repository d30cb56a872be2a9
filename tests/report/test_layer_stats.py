"""Streaming layer statistics equal the same numbers computed directly on the tensors."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.model import calibrate, prepare, quant_modules
from lowbit.primitives.metrics import sqnr_db
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.report.layer_stats import collect, per_channel_twin, weight_sqnr

W4A8 = lowbit.recipe_from_flags(quantize_all=True, quant_bits=4).rules[0].config


def test_collect_matches_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    batches = [torch.randn(6, 8), torch.randn(5, 8)]
    q = prepare(model, Recipe((Rule(ByType(("Linear",)), W4A8),)))
    with calibrate(q):
        for b in batches:
            q(b)
    stats = collect(q, batches, sample_size=50)
    first = q[0]
    x = torch.cat(batches)
    assert stats["0"]["act_sqnr_db"] == pytest.approx(sqnr_db(x, first.act_quantizer(x)), rel=1e-6)
    assert stats["0"]["observed_range"] == pytest.approx([float(x.min()), float(x.max())])
    y_float = torch.nn.functional.linear(x, first.weight, first.bias)
    assert stats["0"]["out_sqnr_db"] == pytest.approx(sqnr_db(y_float, first(x)), rel=1e-5)
    w = first.weight.detach()
    assert stats["0"]["weight_sqnr_db"] == pytest.approx(sqnr_db(w, first.quantized_weight()))
    qp = first.act_quantizer.qparams()
    s, z = float(qp.scale), float(qp.zero_point)
    assert stats["0"]["clip_range"] == pytest.approx(((-8 - z) * s, (7 - z) * s))
    assert stats["0"]["sample"].numel() == 50
    assert stats["0"]["weight_sqnr_per_channel_db"] is None  # already per channel
    assert all(m.weight_quantizer.enabled and m.act_quantizer.enabled
               for _, m in quant_modules(q))


def test_per_tensor_twin_is_per_channel_and_not_worse():
    torch.manual_seed(0)
    layer = nn.Linear(32, 8)
    with torch.no_grad():
        layer.weight.mul_(2.0 ** torch.arange(8.0)[:, None])  # rows 1x .. 128x as loud
    spec = lowbit.QuantSpec(qtype=lowbit.int4)  # per tensor
    twin = per_channel_twin(spec)
    assert twin.granularity == lowbit.PerChannel(0)
    q = lowbit.QuantLinear.from_float(layer, lowbit.LayerConfig(spec, None))
    assert weight_sqnr(q, twin) > weight_sqnr(q) + 3.0
