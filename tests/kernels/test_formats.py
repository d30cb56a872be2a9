"""ActFormat: a layer's input spec lowered once; the registry's supports() reads it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.kernels import ActFormat, find
from lowbit.kernels.formats import act_kernel_reason
from lowbit.kernels.weights import quant_weight
from lowbit.nn.quantized import QuantizedLinear
from lowbit.types import PerChannel, PerGroup, PerTensor, PerToken, Scheme, int8, uint8

DYN_TOKEN = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerToken(), dynamic=True)
STATIC_SYM = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerTensor())


@pytest.mark.parametrize("spec,per_token,static,mode", [
    (DYN_TOKEN, True, False, "dynamic_int8"),
    (QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor(), dynamic=True),
     False, False, "dynamic_int8_tensor"),
    (STATIC_SYM, False, True, "dynamic_int8_tensor"),
    (QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerToken(), dynamic=True),
     True, False, None),
    (QuantSpec(qtype=uint8, scheme=Scheme.AFFINE, granularity=PerTensor()), False, True, None),
    (QuantSpec(qtype=int8, granularity=PerChannel(1)), False, True, None),
])
def test_from_spec_lowers_granularity_and_calibration_once(spec, per_token, static, mode):
    fmt = ActFormat.from_spec(spec)
    assert (fmt.per_token, fmt.static, fmt.mode) == (per_token, static, mode)
    assert (act_kernel_reason(fmt) is None) == (mode is not None)


def test_a_static_input_is_not_described_as_dynamic():
    fmt = ActFormat.from_spec(STATIC_SYM)
    assert fmt.static and "static int8 symmetric PerTensor" == fmt.describe()


def test_from_mode_keeps_the_string_api_and_refuses_unknown_modes():
    assert ActFormat.from_mode("dynamic_int8") == ActFormat.from_spec(DYN_TOKEN)
    assert ActFormat.from_mode(None) is None
    with pytest.raises(ConfigError, match="act='int4'.*dynamic_int8"):
        ActFormat.from_mode("int4")


def test_the_w8a8_kernels_refuse_formats_their_quantizer_cannot_compute():
    torch.manual_seed(0)
    w = quant_weight(torch.randint(-127, 128, (32, 64), dtype=torch.int8),
                     torch.rand(32, 1) + 0.1, torch.zeros(32, 1, dtype=torch.int32), int8, (1, 64))
    impl = find("linear.w8a8", "integer", "cpu", "aten._int_mm")
    assert impl.supports(w, ActFormat.from_spec(DYN_TOKEN)) is None
    assert impl.supports(w, ActFormat.from_spec(STATIC_SYM)) is None
    uint8_static = ActFormat.from_spec(QuantSpec(qtype=uint8, granularity=PerTensor()))
    assert "int8 activations" in impl.supports(w, uint8_static)


def test_a_layer_weight_is_symmetric_by_its_spec_not_by_its_data():
    """An AFFINE weight whose zero points happen to be 0 is still AFFINE to the kernels."""
    spec = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerChannel(0))
    real = QuantizedLinear.from_float(nn.Linear(64, 32), LayerConfig(weight=spec))
    real.zero_point.zero_()
    assert real._quant_weight().symmetric is False
    assert quant_weight(real.qdata, real.scale, real.zero_point, int8, (1, 64)).symmetric, \
        "raw tensors without a spec are read from their zero points"


def test_a_layer_plans_once_and_its_kernel_runs_that_plan():
    torch.manual_seed(0)
    real = QuantizedLinear.from_float(nn.Linear(64, 32), LayerConfig(weight=QuantSpec(
        qtype=int8, granularity=PerChannel(0)), act=DYN_TOKEN))
    planned = real.kernel_plan()
    assert real.kernel_plan() is planned, "cached while weight, qparams and path are unchanged"
    assert "measured on first use" in real.kernel, "what convert records before any input"
    with torch.no_grad():
        real(torch.randn(3, 64))
    assert real.__dict__["_kernel"][0].plan is planned and real.kernel_plan() is planned
    assert "rows 2-3" in real.kernel, "the bucket the input used is decided in the same plan"
    real.set_kernel_path("dense")
    assert real.kernel_plan() is not planned and real.kernel_path == "dense"


def test_grouped_weights_lower_to_their_block():
    real = QuantizedLinear.from_float(nn.Linear(64, 32), LayerConfig(weight=QuantSpec(
        qtype="int4", granularity=PerGroup(32))))
    w = real._quant_weight()
    assert w.block_size == (1, 32) and w.symmetric
