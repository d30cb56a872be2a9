"""Native int4 group-wise kernel against the reference; the float-zero rewrite is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.kernels.int4 import kernel_group, prepare_cpu, run
from lowbit.kernels.registry import find
from lowbit.kernels.weights import quant_weight
from lowbit.types import PerChannel, PerGroup, Scheme, int2, int3, int4, int8, uint4

W4 = find("linear.w4", "integer", "cpu")
REF = find("linear.w4", "reference", "cpu")


def _problem(qweight, qtype, gran, scheme, n=32, k=256):
    torch.manual_seed(0)
    w, x, b = torch.randn(n, k), torch.randn(6, k), torch.randn(n)
    return w, x, b, quant_weight(*qweight(w, qtype, gran, scheme))


@pytest.mark.parametrize("gran, group", [(PerGroup(32, 1), 32), (PerGroup(128, 1), 128),
                                         (PerGroup(512, 1), 256), (PerChannel(0), 256),
                                         (PerGroup(96, 1), 32), (PerGroup(16, 1), None)])
def test_group_size_is_the_largest_supported_that_tiles_the_blocks(qweight, gran, group):
    _, _, _, qw = _problem(qweight, int4, gran, Scheme.SYMMETRIC, k=768 if group != 256 else 1024)
    assert kernel_group(qw) == group


@pytest.mark.parametrize("qtype, gran, scheme", [
    (int4, PerGroup(128, 1), Scheme.SYMMETRIC), (int4, PerGroup(32, 1), Scheme.AFFINE),
    (uint4, PerGroup(64, 1), Scheme.AFFINE), (int3, PerChannel(0), Scheme.AFFINE),
    (int2, PerGroup(32, 1), Scheme.SYMMETRIC)])
def test_matches_the_reference(qweight, relerr, qtype, gran, scheme):
    w, x, b, qw = _problem(qweight, qtype, gran, scheme)
    ref = REF.run(qw, x, b, None)
    quant_err = relerr(ref, F.linear(x, w, b))
    bf16 = run(prepare_cpu(qw, torch.bfloat16), x, b, None)
    assert bf16.dtype == torch.float32, "output dtype = input dtype"
    assert relerr(bf16, ref) <= 1.5 * quant_err
    # in float32 the rewrite (u − 8)·s + (qmin + 8 − z)·s = (q − z)·s is exact up to rounding
    f32 = run(prepare_cpu(qw, torch.float32), x, b, None)
    assert relerr(f32, ref) <= 1e-5, "wrong zero/scale rewrite or nibble order"


def test_supports_names_each_limit(qweight):
    _, _, _, odd_n = _problem(qweight, int4, PerGroup(32, 1), Scheme.SYMMETRIC, n=24)
    assert "N a multiple of 16" in W4.supports(odd_n)
    _, _, _, small = _problem(qweight, int4, PerGroup(16, 1), Scheme.SYMMETRIC)
    assert "groups of 32/64/128/256" in W4.supports(small)
    _, _, _, wide = _problem(qweight, int8, PerGroup(32, 1), Scheme.SYMMETRIC)
    assert "more than 4 bits" in W4.supports(wide)
    _, _, _, ok = _problem(qweight, uint4, PerGroup(64, 1), Scheme.AFFINE)
    assert W4.supports(ok) is None
