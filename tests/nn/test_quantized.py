"""Real low-bit modules: convert == fake-quant (bit for bit), storage, from_linear, state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError, InputError, StateError
from lowbit.nn.qat import QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear
from lowbit.nn.quantized import (QuantizedConv1d, QuantizedConv2d, QuantizedEmbedding,
                                 QuantizedLinear)
from lowbit.primitives.affine import choose_qparams, dequantize, quantize
from lowbit.compat.seed001 import quantize_weight_per_channel
from lowbit.types import (PerTensor, PerChannel, PerGroup, PerToken, Scheme, int4, int8, int16,
                          uint4, uint8)

W8 = QuantSpec(qtype=int8, granularity=PerChannel(0))
W4G = QuantSpec(qtype=int4, granularity=PerGroup(8))
W16 = QuantSpec(qtype=int16, scheme=Scheme.AFFINE, granularity=PerChannel(0))
Q88 = QuantSpec(qtype=int16, scheme=Scheme.FIXED_POINT, frac_bits=8)
A8 = QuantSpec(qtype=int8)
AU8 = QuantSpec(qtype=uint8, scheme=Scheme.AFFINE)
A8_TOKEN = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerToken(), dynamic=True)
LSQ = LayerConfig(weight=QuantSpec(qtype=int4, granularity=PerChannel(0), learnable=True),
                  act=QuantSpec(qtype=int8, scheme=Scheme.AFFINE, learnable=True))

CASES = {  # name: (float module, QAT class, config, input shape, fq_impl)
    "linear-w8-a8": (nn.Linear(16, 6), QuantLinear, LayerConfig(W8, A8), (4, 16), "reference"),
    "linear-w8-au8-fused": (nn.Linear(16, 6), QuantLinear, LayerConfig(W8, AU8), (3, 5, 16),
                             "fused"),
    "linear-w4g-token": (nn.Linear(16, 6), QuantLinear, LayerConfig(W4G, A8_TOKEN), (2, 3, 16),
                         "reference"),
    "linear-uint4-affine": (nn.Linear(16, 5, bias=False), QuantLinear,
                            LayerConfig(QuantSpec(qtype=uint4, scheme=Scheme.AFFINE,
                                                  granularity=PerGroup(4)), None), (3, 16),
                            "reference"),
    "linear-w16": (nn.Linear(16, 6), QuantLinear, LayerConfig(W16, AU8), (4, 16), "fused"),
    "linear-q88": (nn.Linear(16, 6), QuantLinear, LayerConfig(Q88, Q88), (4, 16), "reference"),
    "linear-lsq-fused": (nn.Linear(16, 6), QuantLinear, LSQ, (4, 16), "fused"),
    "linear-lsq-ref": (nn.Linear(16, 6), QuantLinear, LSQ, (4, 16), "reference"),
    "conv1d": (nn.Conv1d(4, 6, 3, padding=1), QuantConv1d, LayerConfig(W8, A8), (2, 4, 9),
               "reference"),
    "conv2d": (nn.Conv2d(4, 6, 3, stride=2, padding=1), QuantConv2d, LayerConfig(W8, AU8),
               (2, 4, 8, 8), "fused"),
    "conv2d-grouped-w4g": (nn.Conv2d(4, 6, 2, groups=2), QuantConv2d, LayerConfig(W4G, A8),
                           (2, 4, 5, 5), "reference"),
    "conv2d-depthwise": (nn.Conv2d(4, 4, 3, groups=4, padding=1, padding_mode="reflect"),
                         QuantConv2d, LayerConfig(W8, A8), (2, 4, 6, 6), "reference"),
    "conv2d-1x1-w16": (nn.Conv2d(8, 4, 1), QuantConv2d, LayerConfig(W16, None), (2, 8, 3, 3),
                       "reference"),
    "embedding-w8": (nn.Embedding(12, 8), QuantEmbedding, LayerConfig(W8), None, "reference"),
    "embedding-w4g": (nn.Embedding(12, 16, padding_idx=1), QuantEmbedding, LayerConfig(W4G),
                      None, "fused"),
}


def _input(shape, gen_scale=1.0):
    if shape is None:  # embedding indices
        return torch.randint(0, 12, (3, 5))
    return gen_scale * torch.randn(shape)


def _calibrated_qat(name, seed=0):
    torch.manual_seed(seed)
    module, qat_cls, cfg, shape, fq_impl = CASES[name]
    qat = qat_cls.from_float(copy.deepcopy(module), cfg, fq_impl).start_observing()
    if shape is not None:
        for scale in (1.0, 2.0):
            qat(_input(shape, scale))
    return qat.freeze(), shape


REAL = {QuantLinear: QuantizedLinear, QuantConv1d: QuantizedConv1d,
        QuantConv2d: QuantizedConv2d, QuantEmbedding: QuantizedEmbedding}


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_output_is_bit_identical_to_fake_quant(name):
    qat, shape = _calibrated_qat(name)
    real = REAL[type(qat)].from_qat(qat)
    # kernel path 'auto' (the default) may round through bfloat16 kernels; 'reference' is
    # the exact fake-quant arithmetic this test holds to equality (tests/nn/test_kernel_dispatch.py
    # holds the kernels to their tolerance)
    real.set_kernel_path("reference")
    x = _input(shape, 1.5)  # partly outside the calibrated range: clamping is compared too
    # identical arithmetic (same qparams, same rounding, same float op): exact equality,
    # stronger than the 1e-5 relative the issue asks for
    assert torch.equal(real(x), qat(x)), name
    assert torch.equal(real.dequantized_weight(), qat.quantized_weight())


def test_int4_is_packed_half_a_byte_per_weight():
    qat, _ = _calibrated_qat("linear-w4g-token")
    real = QuantizedLinear.from_qat(qat)
    assert real.packed and real.qdata.dtype == torch.uint8
    assert tuple(real.qdata.shape) == (6, 8), "16 int4 codes per row pack into 8 bytes"
    expected = 6 * 8 + real.scale.numel() * 4 + real.zero_point.numel() * 4 + 6 * 4
    assert real.nbytes() == expected, "qdata + scale + zero_point + bias (dynamic act: no state)"
    w8 = QuantizedLinear.from_linear(qat.to_float())
    assert w8.qdata.dtype == torch.int8 and w8.qdata.numel() == 2 * real.qdata.numel()
    # 3-bit codes pack too: ceil(16 * 3 / 8) bytes per row
    w3 = QuantizedLinear.from_linear(nn.Linear(16, 2), QuantSpec(qtype="int3"))
    assert tuple(w3.qdata.shape) == (2, 6) and w3.packed


def test_from_linear_matches_per_channel_int8_primitives():
    torch.manual_seed(1)
    lin = nn.Linear(32, 10)
    real = QuantizedLinear.from_linear(lin)
    # kernel path 'auto' (the default) may round through bfloat16 kernels; 'reference' is
    # the exact fake-quant arithmetic this test holds to equality (tests/nn/test_kernel_dispatch.py
    # holds the kernels to their tolerance)
    real.set_kernel_path("reference")
    qp = choose_qparams(lin.weight, int8, Scheme.SYMMETRIC, PerChannel(0))
    q = quantize(lin.weight, qp)
    assert torch.equal(real.qdata, q) and torch.equal(real.scale, qp.scale)
    q_seed, scales = quantize_weight_per_channel(lin.weight)  # seed 001's helper
    assert torch.equal(real.qdata, q_seed) and torch.equal(real.scale.reshape(-1), scales)
    x = torch.randn(5, 32)
    assert torch.equal(real(x), F.linear(x, dequantize(q, qp), lin.bias))
    assert real.act_quantizer is None and real.weight_spec.granularity == PerChannel(0)


def test_from_linear_with_static_act_needs_calibration():
    torch.manual_seed(2)
    real = QuantizedLinear.from_linear(nn.Linear(8, 3), act_spec=A8)
    # kernel path 'auto' (the default) may round through bfloat16 kernels; 'reference' is
    # the exact fake-quant arithmetic this test holds to equality (tests/nn/test_kernel_dispatch.py
    # holds the kernels to their tolerance)
    real.set_kernel_path("reference")
    x = torch.randn(4, 8)
    with pytest.raises(StateError, match="not calibrated.*Calibrate first"):
        real(x)
    real.act_quantizer.start_observing()
    real(x)
    real.act_quantizer.freeze()
    qp = choose_qparams(x, int8)
    expected = F.linear(dequantize(quantize(x, qp), qp), real.dequantized_weight(), real.bias)
    assert torch.equal(real(x), expected)


@pytest.mark.parametrize("name", ["linear-w8-a8", "linear-w4g-token", "conv2d-grouped-w4g",
                                  "embedding-w4g", "linear-q88"])
def test_state_dict_loads_into_a_constructed_module(name, tmp_path):
    qat, shape = _calibrated_qat(name, seed=3)
    src = REAL[type(qat)].from_qat(qat)
    state = src.state_dict()
    for key in ("qdata", "scale", "zero_point"):
        assert key in state, f"{key} must be saved"
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))  # tensors only
    cfg = CASES[name][2]
    if isinstance(src, QuantizedLinear):
        dst = QuantizedLinear(src.in_features, src.out_features, src.bias is not None,
                              weight_spec=cfg.weight, act_spec=cfg.act)
    elif isinstance(src, QuantizedConv2d):
        dst = QuantizedConv2d(4, 6, 2, groups=2, weight_spec=cfg.weight, act_spec=cfg.act)
    else:
        dst = QuantizedEmbedding(12, 16, padding_idx=1, weight_spec=cfg.weight)
    assert torch.equal(dst.qdata, torch.zeros_like(src.qdata)), "placeholders before loading"
    dst.load_state_dict(load_file(str(path)))
    x = _input(shape, 1.0)
    assert torch.equal(dst(x), src(x))
    assert dst.nbytes() == src.nbytes()


def test_from_float_for_conv_and_embedding_quantizes_weights_directly():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    real = QuantizedConv2d.from_float(conv, LayerConfig(weight=W4G.replace(
        granularity=PerGroup(9))))
    w2d = conv.weight.detach().reshape(4, 27)
    qp = choose_qparams(w2d, int4, Scheme.SYMMETRIC, PerGroup(9))
    assert torch.equal(real.dequantized_weight(), dequantize(quantize(w2d, qp), qp).reshape(
        conv.weight.shape)), "conv weights are quantized as the [O, I*kh*kw] matrix"
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(real(x), conv._conv_forward(x, real.dequantized_weight(), conv.bias))
    emb = QuantizedEmbedding.from_float(nn.Embedding(5, 4), LayerConfig(weight=W8))
    assert emb.qdata.dtype == torch.int8 and emb(torch.tensor([0, 4])).shape == (2, 4)


def test_from_qat_user_errors():
    qat = QuantLinear.from_float(nn.Linear(4, 2), LayerConfig(W8, A8))
    with pytest.raises(StateError, match="weight_quantizer is uncalibrated: calibrate"):
        QuantizedLinear.from_qat(qat)
    qat.weight_quantizer.freeze(qat.weight.detach())
    with pytest.raises(StateError, match="act_quantizer is uncalibrated: calibrate"):
        QuantizedLinear.from_qat(qat)
    with pytest.raises(ConfigError, match="qat='QuantLinear' is invalid.*QuantConv2d"):
        QuantizedConv2d.from_qat(qat)
    act_only = QuantLinear.from_float(nn.Linear(4, 2), LayerConfig(act=A8))
    with pytest.raises(ConfigError, match="LayerConfig.weight=None.*keep this layer"):
        QuantizedLinear.from_qat(act_only)
    observing = QuantLinear.from_float(nn.Linear(4, 2), LayerConfig(W8)).start_observing()
    with pytest.raises(StateError, match="weight_quantizer is observing"):
        QuantizedLinear.from_qat(observing)


def test_from_float_and_constructor_user_errors():
    with pytest.raises(ConfigError, match="config=.*LayerConfig"):
        QuantizedLinear.from_float(nn.Linear(2, 2), W8)
    with pytest.raises(ConfigError, match="module='Conv1d' is invalid.*Linear"):
        QuantizedLinear.from_float(nn.Conv1d(1, 1, 1), LayerConfig(W8))
    with pytest.raises(ConfigError, match="LayerConfig.weight=None"):
        QuantizedLinear.from_float(nn.Linear(2, 2), LayerConfig(act=A8))
    with pytest.raises(ConfigError, match="weight_spec='int8' is invalid"):
        QuantizedLinear(2, 2, weight_spec="int8")
    with pytest.raises(ConfigError, match="act_spec=8 is invalid"):
        QuantizedLinear(2, 2, act_spec=8)
    with pytest.raises(ConfigError, match="LayerConfig.act=.*None for an Embedding"):
        QuantizedEmbedding(4, 2, act_spec=A8)
    real = QuantizedLinear(4, 2)
    with pytest.raises(ConfigError, match="weight=.*shape \\(3, 4\\).*allowed shape \\(2, 4\\)"):
        real.set_weight(torch.randn(3, 4), choose_qparams(torch.randn(3, 4), int8,
                                                          granularity=PerChannel(0)))


def test_summary_and_repr_describe_storage():
    real = QuantizedLinear.from_linear(nn.Linear(16, 4), W4G, act_spec=A8_TOKEN)
    s = real.summary()
    assert s["packed"] and s["qtype"] == "int4" and s["block_size"] == [1, 8]
    assert s["act"]["state"] == "dynamic" and s["nbytes"] == real.nbytes()
    assert "packed=True" in repr(real)
    assert real.act_spec == A8_TOKEN and QuantizedLinear(2, 2).weight_spec.qtype == int8
    assert QuantizedLinear(2, 2).weight_spec.granularity == PerChannel(0)


@pytest.mark.parametrize("spec", [
    QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0)),
    QuantSpec(qtype=int4, scheme=Scheme.AFFINE, granularity=PerChannel(0)),
    QuantSpec(qtype=int4, scheme=Scheme.SYMMETRIC, granularity=PerGroup(4, 1)),
    QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerTensor()),
])
def test_embedding_gathers_codes_then_dequantizes_bit_identically(spec):
    torch.manual_seed(0)
    emb = QuantizedEmbedding.from_float(nn.Embedding(50, 16), LayerConfig(weight=spec))
    idx = torch.randint(0, 50, (3, 7))
    with torch.inference_mode():
        assert torch.equal(emb(idx), emb._forward_reference(idx))


def test_embedding_rejects_indices_outside_the_table():
    emb = QuantizedEmbedding.from_float(nn.Embedding(5, 4), LayerConfig(weight=W8))
    with pytest.raises(InputError, match=r"\[0, 4\]"):
        emb(torch.tensor([[1, 5]]))
