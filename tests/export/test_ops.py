"""lowbit.export.ops: the eager faces of the export ops against lowbit's own arithmetic."""

from __future__ import annotations

import pytest
import torch

from lowbit import (PerChannel, PerGroup, PerTensor, PerToken, QuantSpec, Scheme, TensorQuantizer,
                    int8, uint8)
from lowbit.export import ops
from lowbit.primitives.affine import choose_qparams, dequantize, fake_quantize, quantize


def _activations(seed: int = 0) -> torch.Tensor:
    """(2, 5, 16) activations with outliers, exact ties and an all-zero token."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 16, generator=g) * 3
    x[0, 1] = 0.0  # an all-zero token: the scale floor EPS
    x[1, 2, :4] = torch.tensor([0.5, 1.5, -2.5, 40.0])  # ties and an outlier
    return x


@pytest.mark.parametrize("spec", [
    QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerToken(), dynamic=True),
    QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerToken(), dynamic=True),
    QuantSpec(qtype=uint8, scheme=Scheme.SYMMETRIC, granularity=PerToken(), dynamic=True),
    QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor(), dynamic=True),
], ids=["int8-affine-token", "int8-sym-token", "uint8-sym-token", "int8-affine-tensor"])
def test_dynamic_fake_quant_is_bit_exact_to_the_quantizer(spec):
    x = _activations()
    expected = TensorQuantizer(spec)(x)
    per_token = isinstance(spec.granularity, PerToken)
    got = ops.fake_quant_dynamic(x, spec.qtype, spec.scheme, per_token)
    assert torch.equal(got, expected), "the exported dynamic formula must be lowbit's, bit for bit"


def test_dynamic_qparams_match_choose_qparams():
    x = _activations(1)
    qp = choose_qparams(x, int8, Scheme.AFFINE, PerToken())
    scale, zero = ops.dynamic_qparams(x, int8, Scheme.AFFINE, per_token=True)
    assert torch.equal(scale, qp.scale) and torch.equal(zero, qp.zero_point.float())


def test_fake_quant_arith_is_bit_exact_to_fake_quantize():
    x = _activations(2)
    qp = choose_qparams(x, int8, Scheme.AFFINE, PerChannel(2))  # scale (1, 1, 16)
    got = ops.fake_quant_arith(x, 1.0 / qp.scale, qp.scale, qp.zero_point.float(), -128, 127)
    assert torch.equal(got, fake_quantize(x, qp))


@pytest.mark.parametrize("granularity,axis,block", [
    (PerTensor(), None, None), (PerChannel(0), 0, None), (PerGroup(4, axis=1), 1, 4)])
def test_dequantize_linear_eager_matches_lowbit_dequantize(granularity, axis, block):
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(3))
    qp = choose_qparams(w, int8, Scheme.AFFINE, granularity)
    codes = quantize(w, qp)
    scale, zero = qp.scale, qp.zero_point.to(torch.int8)
    if axis is None:
        scale, zero = scale.reshape(()), zero.reshape(())
    elif block is None:
        scale, zero = scale.reshape(-1), zero.reshape(-1)
    got = ops.dequantize_linear(codes, scale, zero, onnx_type=ops.ONNX_INT8, axis=axis, block=block)
    assert torch.equal(got, dequantize(codes, qp)), "dequantizing stored codes is exact"


def test_quantize_dequantize_eager_is_onnx_arithmetic():
    """QuantizeLinear divides by the scale and saturates to the zero point's type."""
    x = torch.tensor([-300.0, -1.25, -0.75, 0.25, 0.75, 1.0, 300.0])
    scale, zero = torch.tensor(0.5), torch.tensor(3, dtype=torch.int8)
    got = ops.quantize_dequantize(x, scale, zero, onnx_type=ops.ONNX_INT8)
    q = torch.clamp(torch.round(x / 0.5) + 3, -128, 127)  # round half to even: -2.5->-2, 1.5->2
    assert torch.equal(got, (q - 3) * 0.5)
    assert got[0] == (-128 - 3) * 0.5 and got[-1] == (127 - 3) * 0.5, "saturates at int8"


def test_exporting_sets_and_restores_the_runner():
    assert ops._runner() == ("eager", 0)
    with ops.exporting("torchscript", 17):
        assert ops._runner() == ("torchscript", 17)
        with ops.exporting("dynamo", 21):
            assert ops._runner() == ("dynamo", 21)
        assert ops._runner() == ("torchscript", 17)
    assert ops._runner() == ("eager", 0), "leaving the block restores eager mode"


def test_dynamic_attrs_describe_the_grid():
    attrs = ops.dynamic_attrs(uint8, Scheme.SYMMETRIC, per_token=False)
    assert attrs == {"qmin": 0, "qmax": 255, "symmetric": 1, "signed": 0, "per_token": 0}
