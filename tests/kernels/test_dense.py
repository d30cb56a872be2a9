"""The float twins: reference is the definition, dense equals it in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.kernels.act import ActQuantizer
from lowbit.kernels.dense import prepare_dense, run_dense, run_reference
from lowbit.kernels.weights import quant_weight
from lowbit.primitives.affine import choose_qparams, dequantize, fake_quantize, quantize
from lowbit.types import PerGroup, PerToken, Scheme, int4, int8


def _problem(qweight):
    torch.manual_seed(0)
    w, x, b = torch.randn(24, 64), torch.randn(5, 64), torch.randn(24)
    return w, x, b, quant_weight(*qweight(w, int4, PerGroup(32, 1), Scheme.AFFINE))


def test_reference_is_linear_of_fake_quant_input_and_dequantized_weight(qweight):
    w, x, b, qw = _problem(qweight)
    qp_w = choose_qparams(w, int4, Scheme.AFFINE, PerGroup(32, 1))
    w_hat = dequantize(quantize(w, qp_w), qp_w)
    x_hat = fake_quantize(x, choose_qparams(x, int8, Scheme.AFFINE, PerToken()))
    assert torch.equal(run_reference(qw, x, b, None), F.linear(x, w_hat, b))
    assert torch.equal(run_reference(qw, x, b, ActQuantizer()), F.linear(x_hat, w_hat, b))


@pytest.mark.parametrize("act", [None, ActQuantizer()])
def test_dense_float32_equals_the_reference_bit_for_bit(qweight, act):
    _, x, b, qw = _problem(qweight)
    st = prepare_dense(qw, torch.float32)
    assert torch.equal(run_dense(st, x, b, act), run_reference(qw, x, b, act))
    assert torch.equal(run_dense(st, x, None, act), run_reference(qw, x, None, act))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_dense_bfloat16_stays_within_the_quantization_error(qweight, relerr, x_dtype):
    w, x, b, qw = _problem(qweight)
    ref = run_reference(qw, x, b, None)
    got = run_dense(prepare_dense(qw, torch.bfloat16), x.to(x_dtype), b, None)
    assert got.dtype == x_dtype, "output dtype = input dtype"
    assert relerr(got, ref) <= 1.5 * relerr(ref, F.linear(x, w, b))
