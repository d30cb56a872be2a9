"""Ragged groups: a group size that does not divide the dimension leaves a shorter last group.

The naive reference quantizes each group as a tensor of its own (a Python loop over slices,
one scale per row of the slice); every primitive and observer must give the same bytes.
"""

from __future__ import annotations

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.observers import make_observer
from lowbit.primitives.affine import (block_reduce, choose_qparams, dequantize, expand_param,
                                      fake_quantize, pad_to_blocks, quantize)
from lowbit.types import PerChannel, PerGroup, Scheme, int4, int8, n_blocks, uint4


def naive_groups(w: torch.Tensor, qtype, scheme, size: int):
    """(scales, zeros, codes, dequantized) by looping over column groups of ``size``."""
    scales, zeros, codes = [], [], []
    for start in range(0, w.shape[1], size):
        part = w[:, start:start + size]
        qp = choose_qparams(part, qtype, scheme, PerChannel(0))  # one scale per row of the group
        scales.append(qp.scale)
        zeros.append(qp.zero_point)
        codes.append(quantize(part, qp))
    deq = torch.cat([dequantize(c, choose_qparams(w[:, i * size:(i + 1) * size], qtype, scheme,
                                                  PerChannel(0))) for i, c in enumerate(codes)], 1)
    return torch.cat(scales, 1), torch.cat(zeros, 1), torch.cat(codes, 1), deq


CASES = [(int4, Scheme.SYMMETRIC, 128, 576), (int4, Scheme.AFFINE, 128, 576),
         (uint4, Scheme.AFFINE, 64, 100), (int8, Scheme.SYMMETRIC, 32, 33),
         (int4, Scheme.AFFINE, 5, 7), (int8, Scheme.AFFINE, 16, 16)]


@pytest.mark.parametrize("qtype, scheme, size, k", CASES)
def test_choose_quantize_dequantize_fake_quantize_match_the_naive_loop(qtype, scheme, size, k):
    torch.manual_seed(k)
    w = torch.randn(6, k) * torch.linspace(0.1, 3, k)
    s_ref, z_ref, q_ref, deq_ref = naive_groups(w, qtype, scheme, size)
    qp = choose_qparams(w, qtype, scheme, PerGroup(size, 1))
    assert tuple(qp.scale.shape) == (6, -(-k // size))
    assert torch.equal(qp.scale, s_ref) and torch.equal(qp.zero_point, z_ref)
    q = quantize(w, qp)
    assert torch.equal(q, q_ref)
    assert torch.equal(dequantize(q, qp), deq_ref)
    assert torch.equal(fake_quantize(w, qp), deq_ref)


def test_fake_quantize_gradient_flows_through_the_short_group():
    w = torch.randn(3, 10, requires_grad=True)
    qp = choose_qparams(w, int4, Scheme.SYMMETRIC, PerGroup(4, 1))
    fake_quantize(w, qp).sum().backward()
    assert torch.equal(w.grad, torch.ones(3, 10)), "symmetric minmax clips nothing"


def test_block_reduce_and_padding_keep_the_short_block_exact():
    x = torch.arange(14.0).reshape(2, 7) - 3
    assert torch.equal(block_reduce(x, (1, 3), "amax"), torch.tensor([[-1., 2, 3], [6, 9, 10]]))
    assert torch.equal(block_reduce(x, (1, 3), "amin"), torch.tensor([[-3., 0, 3], [4, 7, 10]]))
    assert pad_to_blocks(x, (1, 7)) is x
    padded = pad_to_blocks(x, (2, 3), "zeros")
    assert padded.shape == (2, 9) and torch.equal(padded[:, 7:], torch.zeros(2, 2))
    assert torch.equal(pad_to_blocks(x, (1, 3), "edge")[:, 7:], x[:, 6:].expand(2, 2))


def test_expand_param_cuts_the_short_block_and_rejects_wrong_counts():
    p = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.equal(expand_param(p, (1, 7), (1, 3)), torch.tensor([[1.0, 1, 1, 2, 2, 2, 3]]))
    wrong = torch.ones(1, 4)   # 4 groups of 3 cover 12, not 7: left uncut, so it does not fit
    assert expand_param(wrong, (1, 7), (1, 3)).shape == (1, 12)


@pytest.mark.parametrize("method", ["minmax", "moving_average", "mse"])  # those taking groups
def test_observers_take_ragged_groups(method):
    """Every observer gives one (scale, zero) per group, the short one included; minmax
    equals the naive loop, the others stay within the group's own range."""
    torch.manual_seed(0)
    w = torch.randn(4, 70)
    spec = QuantSpec(int4, Scheme.SYMMETRIC, PerGroup(32, 1), method)
    obs = make_observer(spec)
    obs.update(w)
    qp = obs.qparams()
    assert tuple(qp.scale.shape) == (4, 3) and qp.block_size == (1, 32)
    if method in ("minmax", "moving_average"):
        assert torch.equal(qp.scale, naive_groups(w, int4, Scheme.SYMMETRIC, 32)[0])
    else:
        amax = block_reduce(w, (1, 32), "absmax")
        assert bool((qp.scale <= amax / int4.qmax * (1 + 1e-6)).all())
        assert bool((qp.scale > 0).all())
    assert n_blocks((4, 70), qp.block_size) == (4, 3)
