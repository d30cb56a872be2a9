"""Shared helpers for the kernel tests: quantized weights as lowbit.nn stores them.

The tolerance used throughout: a kernel's output may differ from the reference by at most
1.5× the quantization error of the layer itself, ``rel(ref, float)`` — the error the user
already accepted by quantizing.  Integer paths are also held to float rounding only.
"""

from __future__ import annotations

import pytest
import torch

from lowbit.primitives.affine import choose_qparams, quantize
from lowbit.primitives.packing import pack_codes
from lowbit.types import Scheme


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error of ``a`` against ``b``."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def quantize_weight(w: torch.Tensor, qtype, granularity, scheme=Scheme.SYMMETRIC):
    """(qdata, scale, zero_point, qtype, block_size) of ``w`` ``[N, K]``; <= 4 bits packed."""
    qp = choose_qparams(w, qtype, scheme, granularity)
    codes = quantize(w, qp)
    qdata = pack_codes(codes, qtype) if qtype.bits <= 4 else codes
    return qdata, qp.scale, qp.zero_point, qtype, qp.block_size


@pytest.fixture
def qweight():
    return quantize_weight


@pytest.fixture
def relerr():
    return rel
