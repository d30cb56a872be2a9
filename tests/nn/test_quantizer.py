"""TensorQuantizer: life cycle, both fq_impls, LSQ, dynamic and fixed point, state_dict, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lowbit.config import QuantSpec
from lowbit.errors import ConfigError, InputError, StateError
from lowbit.nn.quantizer import TensorQuantizer, fit_qparams, fused_fallback_reason
from lowbit.primitives.affine import choose_qparams, fake_quantize
from lowbit.types import (PerChannel, PerGroup, PerTensor, PerToken, QParams, Scheme, int4, int8,
                          int16, uint8)

SHAPES = [(7,), (5, 9), (3, 4, 6), (2, 3, 4, 5)]


def _pair(spec, x):
    """A reference and a fused quantizer frozen on the same data."""
    return [TensorQuantizer(spec, backend).freeze(x) for backend in ("reference", "fused")]


def _grans(shape):
    """Per tensor and per channel along every axis of ``shape``."""
    return [PerTensor()] + [PerChannel(a) for a in range(len(shape))]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scheme", [Scheme.SYMMETRIC, Scheme.AFFINE])
def test_int8_forward_and_input_grad_identical_between_fq_impls(shape, scheme):
    torch.manual_seed(sum(shape))
    calib = torch.randn(shape) + 0.3
    for gran in _grans(shape):
        ref, nat = _pair(QuantSpec(qtype=int8, scheme=scheme, granularity=gran), calib)
        assert nat.uses_fused and nat.fallback_reason is None
        # values inside every block's range, and one far outside it (clamped): the mask matters
        x = 0.9 * torch.rand(shape) * calib
        x.view(-1)[0] = 10 * float(calib.abs().max())
        x.requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y_ref, y_nat = ref(x), nat(x2)
        assert torch.equal(y_ref, y_nat), f"forward differs for {gran} (same arithmetic: exact)"
        up = torch.randn(shape)
        (y_ref * up).sum().backward()
        (y_nat * up).sum().backward()
        assert torch.equal(x.grad, x2.grad), "STE input gradient is a mask: exact"
        assert x.grad.view(-1)[0] == 0, "the clamped value gets no gradient"
        assert (x.grad != 0).any(), "values inside the grid pass the gradient straight through"


@pytest.mark.parametrize("qtype", [int4, uint8, int16])
def test_other_grids_forward_identical_between_fq_impls(qtype):
    torch.manual_seed(qtype.bits)
    calib = torch.randn(6, 10)
    for gran in _grans((6, 10)):
        for scheme in (Scheme.SYMMETRIC, Scheme.AFFINE):
            ref, nat = _pair(QuantSpec(qtype=qtype, scheme=scheme, granularity=gran), calib)
            x = 1.2 * torch.randn(6, 10)
            assert torch.equal(ref(x), nat(x)), f"{qtype} {scheme} {gran}: kernels must agree"


def _rel_close(a, b, what):
    tol = 1e-6 * max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol, \
        f"{what}: fused kernels sum gradients in another order; 1e-6 relative allowed"


@pytest.mark.parametrize("scheme", [Scheme.SYMMETRIC, Scheme.AFFINE])
@pytest.mark.parametrize("gran", [PerTensor(), PerChannel(0), PerChannel(1)])
def test_learnable_gradients_agree_between_fq_impls(scheme, gran):
    torch.manual_seed(3)
    calib = torch.randn(8, 12)
    spec = QuantSpec(qtype=int8, scheme=scheme, granularity=gran, learnable=True)
    ref, nat = _pair(spec, calib)
    assert isinstance(ref.scale, nn.Parameter) and isinstance(nat.scale, nn.Parameter)
    x = (1.4 * torch.randn(8, 12)).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    up = torch.randn(8, 12)
    y_ref, y_nat = ref(x), nat(x2)
    assert torch.equal(y_ref, y_nat), "LSQ forward is affine fake-quant in both fq_impls"
    (y_ref * up).sum().backward()
    (y_nat * up).sum().backward()
    _rel_close(x2.grad, x.grad, "input gradient")
    assert ref.scale.grad is not None and float(ref.scale.grad.abs().sum()) > 0
    _rel_close(nat.scale.grad, ref.scale.grad, "scale gradient")


@pytest.mark.parametrize("gran", [PerTensor(), PerChannel(0)])
def test_learnable_fused_handles_negative_zero_points(gran):
    # torch's per-tensor learnable backward misreads negative zero points (int(z + 0.5));
    # the quantizer shifts the grid so both fq_impls still agree.
    torch.manual_seed(10)
    calib = torch.rand(4, 16) + 0.5  # all positive: affine int8 puts the zero point at -128
    spec = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=gran, learnable=True)
    ref, nat = _pair(spec, calib)
    assert (ref.zero_point == -128).all()
    x = torch.randn(4, 16) * 2  # negative values clamp below the grid
    up = torch.randn(4, 16)
    (ref(x) * up).sum().backward()
    (nat(x) * up).sum().backward()
    _rel_close(nat.scale.grad, ref.scale.grad, "scale gradient with zero point -128")


def test_learnable_per_tensor_scale_gradient_is_lsq_formula():
    torch.manual_seed(4)
    x = torch.randn(4, 16)
    q = TensorQuantizer(QuantSpec(qtype=int4, learnable=True)).freeze(x)
    s = float(q.scale.detach())
    xx = 1.3 * torch.randn(4, 16)
    up = torch.randn(4, 16)
    (q(xx) * up).sum().backward()
    # Paper eq. 3 written out independently: round(v) - v inside, qmin/qmax outside,
    # times g = 1/sqrt(N * qmax) with N = 64 elements sharing the one step.
    v = xx * (1.0 / torch.tensor(s))
    r = torch.round(v)
    ds = torch.where(r < -8, torch.tensor(-8.0), torch.where(r > 7, torch.tensor(7.0), r - v))
    expected = float((up * ds).sum()) / math.sqrt(64 * 7)
    assert float(q.scale.grad.reshape(())) == pytest.approx(expected, rel=1e-5)


def test_observing_returns_the_input_unchanged_and_records_it():
    torch.manual_seed(5)
    q = TensorQuantizer(QuantSpec(qtype=int8)).start_observing()
    x = torch.randn(3, 4, requires_grad=True)
    out = q(x)
    assert out is x, "calibration must not alter activations"
    assert q.observer.n_seen == 12 and q.state == "observing"
    q.freeze()
    expected = choose_qparams(x, int8, Scheme.SYMMETRIC)
    assert torch.equal(q.qparams().scale, expected.scale), "minmax observer gives min/max qparams"
    assert q.state == "frozen" and not q.observing


def test_used_before_calibration_raises_state_error():
    q = TensorQuantizer(QuantSpec(qtype=int8))
    with pytest.raises(StateError, match="not calibrated.*Calibrate first.*start_observing"):
        q(torch.randn(2, 3))
    with pytest.raises(StateError, match="not calibrated.*no observed data"):
        q.start_observing().freeze()
    with pytest.raises(StateError, match="not calibrated"):
        TensorQuantizer(QuantSpec(qtype=int8)).qparams()


def test_dynamic_per_token_matches_choose_qparams_and_falls_back_from_fused():
    torch.manual_seed(6)
    spec = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerToken(), dynamic=True)
    nat = TensorQuantizer(spec, "fused")
    assert "per_token" in nat.fallback_reason and not nat.uses_fused
    x = torch.randn(2, 5, 16) * torch.arange(1, 11).reshape(2, 5, 1)
    expected = fake_quantize(x, choose_qparams(x, int8, Scheme.AFFINE, PerToken()))
    assert torch.equal(nat(x), expected), "each token gets its own min/max qparams"
    assert torch.equal(TensorQuantizer(spec)(x), expected)
    assert nat.state == "dynamic" and nat.qparams(x).scale.shape == (2, 5, 1)
    with pytest.raises(StateError, match="call qparams\\(x\\)"):
        nat.qparams()


def test_dynamic_per_tensor_fused_matches_reference():
    torch.manual_seed(7)
    spec = QuantSpec(qtype=int8, dynamic=True)
    x = torch.randn(4, 6)
    assert torch.equal(TensorQuantizer(spec, "fused")(x), TensorQuantizer(spec)(x))


def test_fallback_reason_only_where_no_fused_op_exists():
    assert fused_fallback_reason(QuantSpec(granularity=PerChannel(0))) is None
    assert "per_group" in fused_fallback_reason(QuantSpec(granularity=PerGroup(4)))
    assert TensorQuantizer(QuantSpec(granularity=PerGroup(4))).fallback_reason is None, \
        "fq_impl 'reference' never falls back"


def test_disabled_quantizer_passes_input_through():
    q = TensorQuantizer(QuantSpec(qtype=int4)).freeze(torch.randn(5))
    q.enabled = False
    x = torch.randn(5)
    assert q(x) is x


def test_fixed_point_q8_8_needs_no_calibration():
    spec = QuantSpec(qtype=int16, scheme=Scheme.FIXED_POINT, frac_bits=8)
    q = TensorQuantizer(spec, "fused")
    assert q.state == "fixed" and q.ready
    x = torch.tensor([[0.001, 1.0 / 3, -2.5, 200.0], [-128.01, 127.999, 0.5 / 256, 1.5 / 256]])
    expected = torch.clamp(torch.round(x * 256), -32768, 32767) / 256
    assert torch.equal(q(x), expected), "Q8.8: multiples of 1/256, clamped to [-128, 128)"
    q.freeze()
    assert q.state == "frozen" and torch.equal(q(x), expected)


def test_qparams_fit_inputs_of_another_rank():
    torch.manual_seed(8)
    q = TensorQuantizer(QuantSpec(qtype=int8)).freeze(torch.randn(2, 3, 8))
    x = torch.randn(5, 8)
    qp = q.qparams()
    expected = fake_quantize(x, QParams(qp.scale.reshape(1, 1), qp.zero_point.reshape(1, 1),
                                        int8, (5, 8)))
    assert torch.equal(q(x), expected)
    pc = TensorQuantizer(QuantSpec(granularity=PerChannel(-1))).freeze(torch.randn(4, 8))
    with pytest.raises(InputError, match="do not fit an input of shape \\(4, 6\\)"):
        pc(torch.randn(4, 6))
    with pytest.raises(InputError, match="feed inputs of the rank"):
        fit_qparams(torch.ones(3, 1), torch.zeros(3, 1), (5,))


def test_state_dict_round_trip_freezes_a_fresh_quantizer():
    torch.manual_seed(9)
    for learnable in (False, True):
        spec = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerChannel(0),
                         learnable=learnable)
        src = TensorQuantizer(spec).freeze(torch.randn(6, 4))
        state = src.state_dict()
        assert set(state) == {"scale", "zero_point", "block_size"}
        dst = TensorQuantizer(spec)
        dst.load_state_dict(state)
        assert dst.is_frozen and isinstance(dst.scale, nn.Parameter) == learnable
        x = torch.randn(6, 4)
        assert torch.equal(dst(x), src(x))
        assert dst.qparams().block_size == (1, 4)


def test_freeze_keeps_trained_scale_until_observing_again():
    q = TensorQuantizer(QuantSpec(qtype=int8, learnable=True)).freeze(torch.ones(4))
    with torch.no_grad():
        q.scale.mul_(2)
    trained = q.scale.detach().clone()
    q.freeze()
    assert torch.equal(q.scale.detach(), trained), "a second freeze() must not undo training"
    q.start_observing(reset=True)
    q(3 * torch.ones(4))
    q.freeze()
    assert float(q.scale.detach()) == pytest.approx(3 / 127), "re-calibration replaces the step"


def test_summary_reports_state_qparams_and_saturation():
    q = TensorQuantizer(QuantSpec(qtype=int8), "fused").start_observing()
    assert q.summary()["sat_ratio"] is None and q.summary()["state"] == "observing"
    q(torch.linspace(-1, 1, 11))
    q.freeze()
    s = q.summary()
    assert s["state"] == "frozen" and s["fused"] is True and s["sat_ratio"] == 0.0
    assert s["qparams"]["scale_max"] == pytest.approx(1 / 127)
    assert s["observer"]["method"] == "minmax" and s["spec"]["qtype"] == "int8"


def test_user_errors_name_field_and_fix():
    with pytest.raises(ConfigError, match="fq_impl='cpp' is invalid.*'reference'"):
        TensorQuantizer(QuantSpec(), fq_impl="cpp")
    with pytest.raises(ConfigError, match="spec='int8' is invalid.*QuantSpec"):
        TensorQuantizer("int8")
    q = TensorQuantizer(QuantSpec())
    with pytest.raises(InputError, match="floating-point tensor.*torch.int64"):
        q.observe(torch.arange(3))
    with pytest.raises(ConfigError, match="qparams='dict' is invalid.*QParams"):
        q.set_qparams({})
    qp4 = choose_qparams(torch.randn(3), int4)
    with pytest.raises(ConfigError, match="qparams.qtype='int4' is invalid.*int8"):
        q.set_qparams(qp4)
