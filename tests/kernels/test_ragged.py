"""Ragged groups on every kernel path: a group size that does not divide K (576 at 128).

Each path is held against the naive reference: the weight dequantized group by group as a
tensor of its own (``tests/primitives/test_ragged.py``), then ``F.linear``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.errors import InputError, KernelUnavailableError
from lowbit.kernels.int4 import kernel_group, padded_k, prepare_cpu, run
from lowbit.kernels.linear import prepare_linear
from lowbit.kernels.registry import find
from lowbit.kernels.weights import quant_weight
from lowbit.primitives.affine import choose_qparams, quantize
from lowbit.primitives.packing import pack_codes
from lowbit.types import PerGroup, Scheme, int4, int8, uint4

from ..primitives.test_ragged import naive_groups


def _ragged(qtype, scheme, size=128, n=32, k=576, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(n, k)
    qp = choose_qparams(w, qtype, scheme, PerGroup(size, 1))
    codes = quantize(w, qp)
    qdata = pack_codes(codes, qtype) if qtype.bits <= 4 else codes
    deq = naive_groups(w, qtype, scheme, size)[3]
    return w, qdata, qp, deq


@pytest.mark.parametrize("qtype, scheme, size, k", [
    (int4, Scheme.SYMMETRIC, 128, 576), (int4, Scheme.AFFINE, 128, 576),
    (uint4, Scheme.AFFINE, 64, 200), (int4, Scheme.SYMMETRIC, 32, 47)])
def test_int4_pack_pads_the_short_group_with_zero_weights(qtype, scheme, size, k):
    w, qdata, qp, deq = _ragged(qtype, scheme, size, k=k)
    qw = quant_weight(qdata, qp.scale, qp.zero_point, qtype, qp.block_size, k=k)
    assert qw.k == k and padded_k(qw) == -(-k // size) * size
    assert kernel_group(qw) is not None
    torch.manual_seed(1)
    x, b = torch.randn(5, k), torch.randn(32)
    ref = F.linear(x, deq, b)
    f32 = run(prepare_cpu(qw, torch.float32), x, b, None)
    assert torch.allclose(f32, ref, rtol=1e-5, atol=1e-4), "padding changed the numerics"
    bf16 = run(prepare_cpu(qw, torch.bfloat16), x, b, None)
    quant_err = float((ref - F.linear(x, w, b)).norm() / F.linear(x, w, b).norm())
    assert float((bf16 - ref).norm() / ref.norm()) <= 1.5 * quant_err


@pytest.mark.parametrize("qtype, scheme", [(int4, Scheme.SYMMETRIC), (int4, Scheme.AFFINE),
                                           (int8, Scheme.SYMMETRIC)])
@pytest.mark.parametrize("path", ["auto", "integer", "dense", "reference"])
def test_every_path_matches_the_naive_reference(qtype, scheme, path, skip_unless_available):
    w, qdata, qp, deq = _ragged(qtype, scheme)
    if qtype is int8 and path == "integer":  # int8 kernels take per-channel scales only
        with pytest.raises(KernelUnavailableError, match=r"one scale per output channel"):
            prepare_linear(qdata, qp.scale, qp.zero_point, qtype, qp.block_size, path=path)
        return
    lin = skip_unless_available(lambda: prepare_linear(
        qdata, qp.scale, qp.zero_point, qtype, qp.block_size, path=path, k=576))
    b = torch.randn(32)
    for m in (1, 5, 40):
        x = torch.randn(m, 576)
        ref = F.linear(x, deq, b)
        got = lin(x, b)
        if path == "reference" or lin.last.path != "integer" or lin.last.compute == torch.float32:
            assert torch.allclose(got, ref, rtol=1e-5, atol=1e-4), (path, m, lin.last.describe())
        else:  # a bfloat16 integer kernel: its rounding, within the layer's quantization error
            quant_err = float((ref - F.linear(x, w, b)).norm() / F.linear(x, w, b).norm())
            assert float((got - ref).norm() / ref.norm()) <= 1.5 * quant_err


def test_packed_ragged_codes_need_k_or_say_so():
    _, qdata, qp, _ = _ragged(int4, Scheme.SYMMETRIC, k=575)
    assert quant_weight(qdata, qp.scale, qp.zero_point, int4, qp.block_size, k=575).k == 575
    with pytest.raises(InputError, match=r"K=576 inputs in groups of 128 make 5 groups.*pass k="):
        quant_weight(qdata, qp.scale[:, :4], qp.zero_point[:, :4], int4, qp.block_size, k=576)
    with pytest.raises(InputError, match=r"describe \[32, 640\].*k= for packed codes"):
        quant_weight(qdata, qp.scale, qp.zero_point, int4, qp.block_size)  # 288 bytes: K 575/576


def test_reference_kernel_is_registered_for_the_ragged_op():
    assert find("linear.w4", "reference", "cpu") is not None
