"""Native int8 kernels against the reference, exact accumulation, the layout relied on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.kernels.act import ActQuantizer
from lowbit.kernels.int8 import (MAX_K_W8A8, int8_codes, prepare_w8, prepare_w8a8,
                                 prepare_w8a8_codes, run_w8, run_w8a8, run_w8a8_codes)
from lowbit.kernels.registry import find
from lowbit.kernels.weights import quant_weight
from lowbit.types import PerChannel, PerGroup, Scheme, int4, int8, uint8

W8A8 = find("linear.w8a8", "integer", "cpu", "aten._int_mm")
A8_CODES = find("linear.w8a8", "integer", "cpu", "aten._weight_int8pack_mm(a8 codes)")
W8 = find("linear.w8", "integer", "cpu")
REF_A8 = find("linear.w8a8", "reference", "cpu")
REF_W8 = find("linear.w8", "reference", "cpu")


def _require(impl):
    """Skip unless ``impl`` passed its probe here (``_int_mm`` gives wrong results on some
    oneDNN builds and ISA settings; the dispatcher never runs it there, and nor do we)."""
    from lowbit.kernels.probe import probe
    reason = probe(impl, "cpu")
    if reason is not None:
        pytest.skip(f"{impl.name} is unavailable on this machine: {reason}")


def _problem(qweight, qtype, scheme, m=5, n=48, k=128, seed=0):
    torch.manual_seed(seed)
    w, x, b = torch.randn(n, k), torch.randn(m, k), torch.randn(n)
    return w, x, b, quant_weight(*qweight(w, qtype, PerChannel(0), scheme))


def test_codes_shift_into_int8_without_changing_q_minus_z(qweight):
    _, _, _, qw = _problem(qweight, uint8, Scheme.AFFINE)
    codes, zero = int8_codes(qw)
    assert codes.dtype == torch.int8 and codes.is_contiguous()
    before = qw.codes().int() - qw.zero_point.int()
    assert torch.equal(codes.int() - zero[:, None], before), "q − z must be unchanged"


def test_int_mm_operand_is_the_transposed_view_of_contiguous_codes(qweight):
    # the layout oneDNN's fast int8 GEMM reads without a copy (module docstring)
    _, _, _, qw = _problem(qweight, int8, Scheme.SYMMETRIC, k=128)
    st = prepare_w8a8(qw, torch.float32)
    assert st.b.shape == (128, 48) and st.b.stride() == (1, 128), "column-major [K, N]"
    assert st.b.t().is_contiguous()


@pytest.mark.parametrize("qtype, scheme", [(int8, Scheme.SYMMETRIC), (uint8, Scheme.AFFINE),
                                           (int4, Scheme.AFFINE)])
@pytest.mark.parametrize("mode", ["dynamic_int8", "dynamic_int8_tensor"])
@pytest.mark.parametrize("m", [1, 33])
def test_w8a8_matches_the_reference_to_float_rounding(qweight, relerr, qtype, scheme, mode, m):
    _require(W8A8)
    w, x, b, qw = _problem(qweight, qtype, scheme, m=m)
    act = ActQuantizer(mode)
    ref = REF_A8.run(qw, x, b, act)
    got = run_w8a8(prepare_w8a8(qw, torch.float32), x, b, act)
    quant_err = relerr(ref, F.linear(x, w, b))
    # integer accumulation is exact: only the float epilogue rounds (~1e-7)
    assert relerr(got, ref) <= 1e-5, "int path differs from the reference beyond rounding"
    assert relerr(got, ref) <= 1.5 * quant_err


def test_accumulator_does_not_overflow_at_k_4096_with_extreme_codes(qweight):
    _require(W8A8)
    k = 4096
    torch.manual_seed(0)
    signs = torch.where(torch.rand(3, k) < 0.9, 1.0, -1.0)
    a = (127 * signs).to(torch.int8)
    a[0] = 127  # every product +127·127: 66 MB of int32 headroom used, none of int16
    w = torch.full((16, k), 127, dtype=torch.int8)
    w[1::2] = -127
    got = torch._int_mm(a, w.t())
    assert torch.equal(got.long(), a.long() @ w.long().t()), "int32 accumulation must be exact"
    assert int(got.abs().max()) == 127 * 127 * k

    # the same through the kernel: rows of ±1 quantize to codes 127 / -128, weights to ±127
    x = signs.clone()
    x[0] = 1.0
    wf = torch.where(w > 0, 1.0, -1.0)
    qw = quant_weight(*qweight(wf, int8, PerChannel(0)))
    got = run_w8a8(prepare_w8a8(qw, torch.float32), x, None, ActQuantizer())
    exact = F.linear(ActQuantizer().reference(x).double(), qw.dequantize().double())
    assert float((got.double() - exact).abs().max() / exact.abs().max()) < 1e-6


def test_w8a8_refuses_what_it_cannot_compute(qweight):
    torch.manual_seed(0)
    grouped = quant_weight(*qweight(torch.randn(8, 64), int8, PerGroup(32, 1)))
    assert "one scale per output channel" in W8A8.supports(grouped)
    wide = quant_weight(torch.zeros(8, MAX_K_W8A8 + 8, dtype=torch.int8), torch.ones(8, 1),
                        torch.zeros(8, 1, dtype=torch.int32), int8, (1, MAX_K_W8A8 + 8))
    assert "overflow" in W8A8.supports(wide)


@pytest.mark.parametrize("qtype, scheme", [(int8, Scheme.SYMMETRIC), (uint8, Scheme.AFFINE)])
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float32])
def test_weight_only_matches_the_reference_within_the_quantization_error(
        qweight, relerr, qtype, scheme, compute):
    w, x, b, qw = _problem(qweight, qtype, scheme, m=7)
    ref = REF_W8.run(qw, x, b, None)
    got = run_w8(prepare_w8(qw, compute), x, b, None)
    assert got.dtype == x.dtype
    err, quant_err = relerr(got, ref), relerr(ref, F.linear(x, w, b))
    assert err <= 1.5 * quant_err, f"{err:.2e} vs quantization error {quant_err:.2e}"
    if compute == torch.float32:
        assert err <= 1e-5, "float32 compute only rounds"


@pytest.mark.parametrize("qtype, scheme", [(int8, Scheme.SYMMETRIC), (uint8, Scheme.AFFINE)])
def test_weight_only_pads_k_not_a_multiple_of_8(qweight, relerr, qtype, scheme):
    """torch's CPU kernel reads out of bounds at such K from 3 rows up: the pack pads K with
    zero columns and the input with zeros, which leaves the result that of the real K."""
    torch.manual_seed(0)
    w, x, b = torch.randn(8, 20), torch.randn(5, 20), torch.randn(8)
    odd = quant_weight(*qweight(w, qtype, PerChannel(0), scheme))
    assert W8.supports(odd) is None
    st = prepare_w8(odd, torch.float32)
    assert st.pad == 4 and st.wq.shape == (8, 24) and not st.wq[:, 20:].any()
    ref = REF_W8.run(odd, x, b, None)
    assert relerr(run_w8(st, x, b, None), ref) <= 1e-5, "float32 compute only rounds"


@pytest.mark.parametrize("mode", ["dynamic_int8", "dynamic_int8_tensor"])
@pytest.mark.parametrize("m", [1, 33])
def test_w8a8_on_the_weight_only_kernel_rounds_only_its_bfloat16_output(qweight, relerr, mode,
                                                                         m):
    w, x, b, qw = _problem(qweight, int8, Scheme.SYMMETRIC, m=m, k=512)
    act = ActQuantizer(mode)
    ref = REF_A8.run(qw, x, b, act)
    got = run_w8a8_codes(prepare_w8a8_codes(qw, torch.bfloat16), x, b, act)
    assert got.dtype == x.dtype
    # exact integer products, float32 sums, one bfloat16 rounding of each sum: <= 2^-9 each
    assert relerr(got, ref) <= 2.0 ** -9, "more than the bfloat16 output rounding"
    assert relerr(got, ref) <= 1.5 * relerr(ref, F.linear(x, w, b))


def test_w8a8_on_the_weight_only_kernel_needs_symmetric_weights(qweight):
    _, _, _, affine = _problem(qweight, uint8, Scheme.AFFINE)
    assert "zero points must be 0" in A8_CODES.supports(affine)
    _, _, _, symmetric = _problem(qweight, int8, Scheme.SYMMETRIC)
    assert A8_CODES.supports(symmetric) is None
