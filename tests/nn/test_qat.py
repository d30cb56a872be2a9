"""QAT modules: from_float/to_float, calibration, fake-quant semantics, training, state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError, StateError
from lowbit.nn.qat import QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear, weight_matrix
from lowbit.primitives.affine import choose_qparams, fake_quantize
from lowbit.types import PerChannel, PerGroup, PerTensor, QParams, Scheme, int4, int8

W8 = QuantSpec(qtype=int8, granularity=PerChannel(0))
A8 = QuantSpec(qtype=int8, scheme=Scheme.AFFINE)
W8A8 = LayerConfig(weight=W8, act=A8)

CONVS = [  # (float module, input shape)
    (nn.Conv2d(4, 6, 3), (2, 4, 7, 7)),
    (nn.Conv2d(4, 6, 1), (2, 4, 5, 5)),                                      # 1x1
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, bias=False), (2, 4, 9, 9)),
    (nn.Conv2d(4, 6, 3, groups=2, padding="same"), (2, 4, 6, 6)),             # grouped
    (nn.Conv2d(4, 4, 3, groups=4, padding=1, padding_mode="reflect"), (2, 4, 6, 6)),  # depthwise
    (nn.Conv1d(3, 5, 3, stride=2, padding=2, dilation=2), (2, 3, 11)),
    (nn.Conv1d(4, 4, 5, groups=4, padding=2, padding_mode="circular"), (2, 4, 9)),
]


def _calibrated(qat, *batches):
    qat.start_observing()
    for x in batches:
        qat(x)
    return qat.freeze()


def test_from_float_shares_parameters_and_keeps_names():
    torch.manual_seed(0)
    lin = nn.Linear(8, 3)
    q = QuantLinear.from_float(lin, W8A8)
    assert q.weight is lin.weight and q.bias is lin.bias, "from_float shares, never copies"
    assert (q.in_features, q.out_features) == (8, 3) and isinstance(q, nn.Linear)
    back = q.to_float()
    assert type(back) is nn.Linear and back.weight is lin.weight and back.bias is lin.bias
    x = torch.randn(4, 8)
    assert torch.equal(back(x), lin(x))


@pytest.mark.parametrize("idx", range(len(CONVS)))
def test_conv_arguments_preserved(idx):
    torch.manual_seed(idx)
    conv, shape = copy.deepcopy(CONVS[idx][0]), CONVS[idx][1]
    qat_cls = QuantConv2d if isinstance(conv, nn.Conv2d) else QuantConv1d
    q = qat_cls.from_float(conv, W8A8)
    for name in ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"):
        assert getattr(q, name) == getattr(conv, name), f"{name} must survive from_float"
    x = torch.randn(shape)
    q.set_fake_quant(False)
    assert torch.equal(q(x), conv(x)), "with fake quant off the QAT conv is the float conv"
    back = q.to_float()
    assert type(back) is type(conv) and torch.equal(back(x), conv(x))


@pytest.mark.parametrize("idx", range(len(CONVS)))
def test_conv_forward_is_float_conv_on_fake_quantized_tensors(idx):
    torch.manual_seed(10 + idx)
    conv, shape = copy.deepcopy(CONVS[idx][0]), CONVS[idx][1]
    qat_cls = QuantConv2d if isinstance(conv, nn.Conv2d) else QuantConv1d
    calib = [torch.randn(shape), 2 * torch.randn(shape)]
    q = _calibrated(qat_cls.from_float(conv, W8A8), *calib)
    x = torch.randn(shape)
    # expected, from the primitives: input range = min/max over all calibration data,
    # weight per output channel on the [O, I/groups*k*k] matrix
    a_qp = choose_qparams(torch.cat([c.reshape(-1) for c in calib]), int8, Scheme.AFFINE)
    ones = [1] * len(shape)
    a_qp = QParams(a_qp.scale.reshape(ones), a_qp.zero_point.reshape(ones), int8, tuple(shape))
    w2d = weight_matrix(conv.weight.detach())
    w_hat = fake_quantize(w2d, choose_qparams(w2d, int8, Scheme.SYMMETRIC, PerChannel(0)))
    expected = conv._conv_forward(fake_quantize(x, a_qp), w_hat.reshape(conv.weight.shape),
                                  conv.bias)
    assert torch.equal(q(x), expected)


def test_linear_forward_is_linear_on_fake_quantized_tensors_per_group():
    torch.manual_seed(1)
    lin = nn.Linear(16, 4)
    cfg = LayerConfig(weight=QuantSpec(qtype=int4, granularity=PerGroup(8)), act=None)
    q = QuantLinear.from_float(lin, cfg).freeze()  # weights only: no data needed
    x = torch.randn(3, 16)
    w_hat = fake_quantize(lin.weight, choose_qparams(lin.weight, int4, Scheme.SYMMETRIC,
                                                     PerGroup(8)))
    assert torch.equal(q(x), F.linear(x, w_hat, lin.bias))
    assert torch.equal(q.quantized_weight(), w_hat)


def test_observing_module_returns_float_output():
    torch.manual_seed(2)
    lin = nn.Linear(6, 3)
    q = QuantLinear.from_float(lin, W8A8).start_observing()
    x = torch.randn(5, 6)
    assert torch.equal(q(x), lin(x)), "calibration forwards are float forwards"
    assert q.weight_quantizer.observer.n_seen == 18, "the weight is observed once at start"
    assert q.act_quantizer.observer.n_seen == 30


def test_used_before_calibration_raises_and_freeze_needs_input_data():
    q = QuantLinear.from_float(nn.Linear(4, 2), W8A8)
    with pytest.raises(StateError, match="not calibrated.*Calibrate first"):
        q(torch.randn(1, 4))
    with pytest.raises(StateError, match="no observed data"):
        q.start_observing().freeze()  # the layer never ran on calibration data


def test_embedding_quantizes_the_table_only():
    torch.manual_seed(3)
    emb = nn.Embedding(10, 8, padding_idx=0)
    cfg = LayerConfig(weight=QuantSpec(qtype=int4, granularity=PerGroup(4)))
    q = QuantEmbedding.from_float(emb, cfg).freeze()
    idx = torch.tensor([[0, 3, 9], [1, 1, 2]])
    w_hat = fake_quantize(emb.weight, choose_qparams(emb.weight, int4, Scheme.SYMMETRIC,
                                                     PerGroup(4)))
    assert torch.equal(q(idx), F.embedding(idx, w_hat, padding_idx=0))
    assert q.padding_idx == 0 and type(q.to_float()) is nn.Embedding
    with pytest.raises(ConfigError, match="LayerConfig.act=.*None for an Embedding"):
        QuantEmbedding.from_float(emb, W8A8)
    with pytest.raises(ConfigError, match="Embedding.max_norm=1.0.*renormalize"):
        QuantEmbedding.from_float(nn.Embedding(4, 2, max_norm=1.0), cfg)


def test_from_float_user_errors():
    with pytest.raises(ConfigError, match="module='Conv2d' is invalid.*nn.modules.linear.Linear"):
        QuantLinear.from_float(nn.Conv2d(1, 1, 1), W8A8)
    q = QuantLinear.from_float(nn.Linear(2, 2), W8A8)
    with pytest.raises(ConfigError, match="module='QuantLinear'.*to_float"):
        QuantLinear.from_float(q, W8A8)
    with pytest.raises(ConfigError, match="config=.*LayerConfig"):
        QuantLinear.from_float(nn.Linear(2, 2), W8)
    with pytest.raises(ConfigError, match="fq_impl='cpp'"):
        QuantLinear.from_float(nn.Linear(2, 2), W8A8, fq_impl="cpp")


def test_weight_only_and_act_only_configs():
    torch.manual_seed(4)
    lin = nn.Linear(5, 2)
    wo = QuantLinear.from_float(lin, LayerConfig(weight=W8)).freeze()
    assert wo.act_quantizer is None and wo.quantizers() == [wo.weight_quantizer]
    ao = _calibrated(QuantLinear.from_float(lin, LayerConfig(act=A8)), torch.randn(3, 5))
    assert ao.weight_quantizer is None and torch.equal(ao.quantized_weight(), lin.weight)


def test_gradients_flow_straight_through():
    torch.manual_seed(5)
    lin = nn.Linear(8, 4)
    q = _calibrated(QuantLinear.from_float(lin, W8A8), torch.randn(16, 8))
    x = torch.randn(6, 8, requires_grad=True)
    q(x).pow(2).sum().backward()
    for name, g in (("weight", lin.weight.grad), ("bias", lin.bias.grad), ("input", x.grad)):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("fq_impl", ["reference", "fused"])
def test_tiny_qat_training_lowers_the_loss(fq_impl):
    torch.manual_seed(6)
    teacher = nn.Linear(12, 4)
    x = torch.randn(64, 12)
    y = teacher(x).detach()
    cfg = LayerConfig(weight=QuantSpec(qtype=int4, granularity=PerChannel(0), learnable=True),
                      act=QuantSpec(qtype=int8, learnable=True))
    q = _calibrated(QuantLinear.from_float(nn.Linear(12, 4), cfg, fq_impl), x)
    step0 = q.weight_quantizer.scale.detach().clone()
    opt = torch.optim.Adam(q.parameters(), lr=2e-2)  # after freeze: steps are Parameters
    losses = []
    for _ in range(40):
        loss = F.mse_loss(q(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # the int4 weight grid floors the loss near 0.16x the start; 0.3x leaves a margin
    assert losses[-1] < 0.3 * losses[0], f"QAT should fit the teacher: {losses[0]} -> {losses[-1]}"
    assert not torch.equal(q.weight_quantizer.scale.detach(), step0), "LSQ steps are trained"


def test_state_dict_round_trip():
    torch.manual_seed(7)
    cfg = LayerConfig(weight=QuantSpec(qtype=int4, granularity=PerGroup(4), learnable=True),
                      act=A8)
    src = _calibrated(QuantConv2d.from_float(nn.Conv2d(2, 3, 2), cfg), torch.randn(2, 2, 4, 4))
    state = src.state_dict()
    for key in ("weight", "bias", "weight_quantizer.scale", "weight_quantizer.zero_point",
                "act_quantizer.scale", "act_quantizer.zero_point"):
        assert key in state, key
    dst = QuantConv2d.from_float(nn.Conv2d(2, 3, 2), cfg)
    dst.load_state_dict(state)
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(dst(x), src(x)), "a fresh module loaded from state_dict is calibrated"
    assert isinstance(dst.weight_quantizer.scale, nn.Parameter)


def test_freeze_is_idempotent_and_fallback_reason_is_reported():
    torch.manual_seed(8)
    cfg = LayerConfig(weight=QuantSpec(qtype=int4, granularity=PerGroup(4), learnable=True),
                      act=QuantSpec(qtype=int8, granularity=PerTensor()))
    q = _calibrated(QuantLinear.from_float(nn.Linear(8, 2), cfg, "fused"), torch.randn(3, 8))
    with torch.no_grad():
        q.weight_quantizer.scale.mul_(1.5)
    trained = q.weight_quantizer.scale.detach().clone()
    q.freeze()
    assert torch.equal(q.weight_quantizer.scale.detach(), trained)
    assert q.fallback_reason.startswith("weight: PyTorch has no fused fake-quant op")
    assert "act:" not in q.fallback_reason, "per-tensor activations run the fused op"
    s = q.summary()
    assert s["weight"]["fused"] is False and s["act"]["fused"] is True
