"""The float twins of every linear op: ``reference`` and ``dense``.

``reference`` is the definition the fast kernels are held against: on every call it
fake-quantizes the input with lowbit's primitives (when the op quantizes activations),
dequantizes the weight and runs ``F.linear`` in float32 — ``F.linear(fake_quant(x),
dequantize(w)) + bias``.  It keeps only the caller's own tensors and is always available.

``dense`` dequantizes the weight once, keeps it in its compute dtype (float32 or bfloat16)
and runs PyTorch's float GEMM: the float path the quantized layer replaces, used where it
is faster than any integer kernel (many rows).  It holds ``N·K`` floats while it is in use
(prepared lazily, see :class:`~lowbit.kernels.linear.PreparedLinear`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .registry import OP_CLASSES, KernelImpl, register
from .weights import QuantWeight


def prepare_reference(w: QuantWeight, compute_dtype: torch.dtype) -> QuantWeight:
    """Nothing to pack: the reference reads the stored codes on every call."""
    return w


def run_reference(w: QuantWeight, x: torch.Tensor, bias, act) -> torch.Tensor:
    """``F.linear(fake_quant(x), dequantize(w)) + bias`` in float32, returned in ``x``'s dtype."""
    x_hat = x.float() if act is None else act.reference(x)
    b = None if bias is None else bias.float()
    return F.linear(x_hat, w.dequantize(torch.float32), b).to(x.dtype)


@dataclass
class DenseState:
    """The dense path's state: the dequantized weight in its compute dtype."""

    weight: torch.Tensor  # [N, K] in the compute dtype
    compute: torch.dtype


def prepare_dense(w: QuantWeight, compute_dtype: torch.dtype) -> DenseState:
    """Dequantize once into ``compute_dtype``."""
    return DenseState(w.dequantize(torch.float32).to(compute_dtype), compute_dtype)


def run_dense(st: DenseState, x: torch.Tensor, bias, act) -> torch.Tensor:
    """Float GEMM on the cached weight (input fake-quantized first when ``act`` is set)."""
    x_hat = x if act is None else act.fake(x)
    if x_hat.dtype == st.compute and x.dtype == st.compute:
        return F.linear(x_hat, st.weight, None if bias is None else bias.to(st.compute))
    y = F.linear(x_hat.to(st.compute), st.weight).to(x.dtype)
    return y if bias is None else y.add_(bias)


def _register() -> None:
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    for op, _, _ in OP_CLASSES:
        register(KernelImpl("reference", op, "reference", "any", prepare_reference,
                            run_reference, (f32,), doc="dequantize + F.linear, float32"))
        register(KernelImpl("F.linear", op, "dense", "any", prepare_dense, run_dense,
                            (f32, bf16, f16), doc="dequantized-once weight, float GEMM"))


_register()
