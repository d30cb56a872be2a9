"""estimate_model_size: float, fake-quant and converted models; ratios; a hand count of the
stored bytes; shared and tied tensors counted once."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.model.api import quantize_model
from lowbit.model.size import estimate_model_size

F32 = 4  # bytes of a float32
I32 = 4  # bytes of an int32 zero point


def mlp(widths=(256, 256, 128)) -> nn.Module:
    """Linear layers whose input sizes (256, 256, 128) all split into groups of 128."""
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:] + (256,))):
        layers += [nn.Linear(a, b), nn.ReLU()] if i < len(widths) - 1 else [nn.Linear(a, b)]
    return nn.Sequential(*layers).eval()


def calib(n: int = 2, width: int = 256) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, width, generator=g) for _ in range(n)]


def linears(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.out_features, m.in_features) for m in model.modules() if isinstance(m, nn.Linear)]


def float_count(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_a_float_model_counts_every_parameter_and_buffer_once():
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))
    size = estimate_model_size(model)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert size["float_bytes"] == size["quantized_bytes"] == float_count(model) + buffers
    assert size["compression_ratio"] == 1.0


def test_int8_weights_only_hand_count_and_about_4x():
    model = mlp()
    q, _ = quantize_model(model, "w8a16", calib())
    size = estimate_model_size(q)
    # per layer: int8 codes [O, K], one float32 scale and one int32 zero point per output
    # channel, and the float32 bias
    expected = sum(o * k + o * F32 + o * I32 + o * F32 for o, k in linears(model))
    assert size["quantized_bytes"] == expected
    assert size["float_bytes"] == float_count(model)
    assert 3.7 < size["compression_ratio"] < 4.0, size  # 4x less the per-channel overhead


def test_int4_group128_hand_count_and_6_to_8x():
    model = mlp()
    q, _ = quantize_model(model, "w4a16-g128", calib())
    size = estimate_model_size(q)
    # per layer: two int4 codes per byte, a float32 scale and an int32 zero point per group
    # of 128 inputs of every output row, and the float32 bias
    expected = sum(o * math.ceil(k / 2) + o * (k // 128) * (F32 + I32) + o * F32
                   for o, k in linears(model))
    assert size["quantized_bytes"] == expected
    assert 6.0 < size["compression_ratio"] < 8.0, size


def test_static_activation_qparams_are_counted_too():
    model = mlp()
    q8, _ = quantize_model(model, "w8a16", calib())
    q8s, _ = quantize_model(model, "w8a8-static", calib())
    extra = estimate_model_size(q8s)["quantized_bytes"] - estimate_model_size(q8)["quantized_bytes"]
    stored = sum(sum(t.numel() * t.element_size() for t in m.act_quantizer.state_dict().values())
                 for m in q8s.modules() if getattr(m, "act_quantizer", None) is not None)
    assert extra == stored > 0, "each input's scale, zero point and block size are stored"


def test_float_bytes_are_the_same_at_every_stage():
    model = mlp()
    fq, _ = quantize_model(model, "w8a8-static", calib(), convert=False)
    q, _ = quantize_model(model, "w8a8-static", calib())
    sizes = [estimate_model_size(m) for m in (model, fq, q)]
    assert len({s["float_bytes"] for s in sizes}) == 1, sizes
    fq_size = sizes[1]
    assert fq_size["quantized_bytes"] > fq_size["float_bytes"], \
        "a fake-quant model stores float weights plus its qparams"
    assert 0.95 < fq_size["compression_ratio"] < 1.0


def test_tied_parameters_count_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(32, 16)
            self.head = nn.Linear(16, 32, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    model = Tied()
    size = estimate_model_size(model)
    assert size["float_bytes"] == size["quantized_bytes"] == 32 * 16 * F32
    assert size["float_bytes"] == float_count(model), "parameters() also yields a tie once"
    fq, _ = quantize_model(model, "w8a16", [torch.randint(0, 32, (2, 3))], convert=False)
    assert fq.head.weight is fq.emb.weight
    assert estimate_model_size(fq)["float_bytes"] == 32 * 16 * F32


def test_a_module_shared_under_two_names_counts_once():
    layer = nn.Linear(8, 8)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    assert estimate_model_size(model)["float_bytes"] == float_count(layer)
    q, _ = quantize_model(model, "w8a16", [torch.randn(2, 8)])
    assert q[0] is q[2]
    assert estimate_model_size(q)["quantized_bytes"] == q[0].nbytes()


def test_an_empty_model_has_ratio_one_not_nan():
    """NaN here reached summary.json (not valid JSON) and the CLI table as "(nanx)"."""
    size = estimate_model_size(nn.ReLU())
    assert size["float_bytes"] == size["quantized_bytes"] == 0
    assert size["compression_ratio"] == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float_bytes_use_the_weights_own_dtype(dtype):
    model = mlp().to(dtype)
    q, _ = quantize_model(model, "w8a16", [x.to(dtype) for x in calib()])
    size = estimate_model_size(q)
    assert size["float_bytes"] == float_count(model), "a half-precision model is 2 bytes a value"
