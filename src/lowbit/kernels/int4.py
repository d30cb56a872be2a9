"""Native int4 group-wise weight-only kernels (``linear.w4``).

PyTorch's int4 kernels compute ``x·Ŵᵀ`` with ``Ŵ = (u − 8)·scale + zero`` per group of ``g``
inputs (``g`` in 32, 64, 128, 256), ``u`` in ``0..15`` and a *float* zero.  lowbit stores
``u = q − qmin`` and means ``x̂ = (q − z)·s``, so ::

    (q − z)·s = (u − 8)·s + (qmin + 8 − z)·s        scale = s,  zero = (qmin + 8 − z)·s

which holds for every grid of at most 4 bits (int4, uint4, int3, int2...).  A block of
``b`` inputs that is a multiple of a supported group size (per channel included, when
``K`` is) runs with that group size, its scale repeated.  A ragged last group (``b`` does
not divide ``K``) is padded to whole blocks once when packing: the padded codes are the
row's zero point (weight exactly 0) and each call pads the input rows with zeros, so the
result is that of the unpadded weight.

CPU: ``_convert_weight_to_int4pack_for_cpu`` (int32 codes ``[N, K]``, ``N`` a multiple of 16)
and ``_weight_int4pack_mm_for_cpu``; fast only with bfloat16 activations, so bfloat16 is the
preferred compute dtype.  CUDA: ``_convert_weight_to_int4pack`` (uint8, two codes a byte,
first code in the *high* nibble; inner k-tiles 8, 4 or 2 as ``K`` allows) and
``_weight_int4pack_mm`` (bfloat16 only).  Every integer kernel is probed once per
device against the reference before it is used (:mod:`.probe`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import KernelImpl, register
from .weights import QuantWeight

GROUP_SIZES = (256, 128, 64, 32)


def kernel_group(w: QuantWeight) -> int | None:
    """The largest supported group size that tiles ``w``'s blocks, or None."""
    if w.block_size[0] != 1:
        return None
    for g in GROUP_SIZES:
        if w.block_size[1] % g == 0 and padded_k(w) % g == 0:
            return g
    return None


def padded_k(w: QuantWeight) -> int:
    """``K`` rounded up to whole blocks (``K`` itself unless the last group is ragged)."""
    return w.scale.shape[1] * w.block_size[1]


def _supports(w: QuantWeight, n_multiple: int) -> str | None:
    if w.qtype.bits > 4:
        return f"{w.qtype.name} has more than 4 bits"
    if kernel_group(w) is None:
        return (f"int4 kernels take groups of {'/'.join(map(str, GROUP_SIZES[::-1]))} inputs "
                f"along K, one per output row; this weight has block {w.block_size}, K={w.k}")
    if w.n % n_multiple:
        return f"int4 kernels need N a multiple of {n_multiple} (N={w.n})"
    return None


@dataclass
class W4State:
    """What the int4 kernel reads on every call, packed once."""

    packed: torch.Tensor   # the kernel's packed weight
    group: int
    sz: torch.Tensor       # [K/g, N, 2] scale and zero in the compute dtype
    compute: torch.dtype
    mm: object             # the matmul op
    pad: int = 0           # zero inputs appended to each row (a ragged last group)


def _scale_zero(w: QuantWeight, g: int, dtype: torch.dtype) -> torch.Tensor:
    """``[K/g, N, 2]``: per-group scale and float zero ``(qmin + 8 − z)·s``."""
    rep = w.block_size[1] // g
    s = w.scale.float().repeat_interleave(rep, dim=1)  # [N, K/g]
    z = w.zero_point.float().repeat_interleave(rep, dim=1)
    zero = (w.qtype.qmin + 8 - z) * s
    return torch.stack([s.t(), zero.t()], dim=-1).to(dtype).contiguous()


def _unsigned(w: QuantWeight) -> torch.Tensor:
    """Codes ``u = q − qmin`` in ``0..15``, int32 ``[N, K_pad]``: a ragged last group is
    filled with its zero point's code, so the padded weights are exactly 0."""
    u = w.codes().to(torch.int32) - w.qtype.qmin
    extra = padded_k(w) - w.k
    if extra:
        fill = (w.zero_point[:, -1:].to(torch.int32) - w.qtype.qmin).expand(w.n, extra)
        u = torch.cat([u, fill.clamp(0, 15)], dim=1)
    return u


def prepare_cpu(w: QuantWeight, compute_dtype: torch.dtype) -> W4State:
    """Pack once for ``_weight_int4pack_mm_for_cpu``."""
    g = kernel_group(w)
    packed = torch._convert_weight_to_int4pack_for_cpu(_unsigned(w), 1)
    return W4State(packed, g, _scale_zero(w, g, compute_dtype), compute_dtype,
                   torch._weight_int4pack_mm_for_cpu, padded_k(w) - w.k)


def prepare_cuda(w: QuantWeight, compute_dtype: torch.dtype) -> W4State:
    """Pack once for CUDA's ``_weight_int4pack_mm`` (two codes a byte, high nibble first)."""
    g = kernel_group(w)
    u = _unsigned(w).to(torch.uint8)
    tiles = next(t for t in (8, 4, 2) if padded_k(w) % (16 * t) == 0)
    packed = torch._convert_weight_to_int4pack((u[:, ::2] << 4 | u[:, 1::2]).contiguous(), tiles)
    return W4State(packed, g, _scale_zero(w, g, compute_dtype), compute_dtype,
                   torch._weight_int4pack_mm, padded_k(w) - w.k)


def run(st: W4State, x: torch.Tensor, bias, act) -> torch.Tensor:
    """``[M, K]`` rows -> ``[M, N]``: float activations × int4 group-wise weights."""
    xc = x.to(st.compute)
    if st.pad:  # zero inputs against the padded (zero) weights of a ragged last group
        xc = torch.nn.functional.pad(xc, (0, st.pad))
    y = st.mm(xc, st.packed, st.group, st.sz).to(x.dtype)  # [M, N]
    if bias is not None:
        y = y.add_(bias)
    return y


def _available(*names: str):
    def available(device: torch.device) -> str | None:
        """None when this torch has the ops, else which are missing."""
        missing = [n for n in names if not hasattr(torch, n)]
        return f"torch {torch.__version__} lacks torch.{', torch.'.join(missing)}" if missing else None
    return available


def _register() -> None:
    bf16, f16, f32 = torch.bfloat16, torch.float16, torch.float32
    register(KernelImpl("aten._weight_int4pack_mm_for_cpu", "linear.w4", "integer", "cpu",
                        prepare_cpu, run, (bf16, f16, f32), lambda w, act=None: _supports(w, 16),
                        _available("_convert_weight_to_int4pack_for_cpu",
                                   "_weight_int4pack_mm_for_cpu"),
                        "float activations x int4 group-wise weights (float zero)",
                        {"probe": ("int4", 32, None)}))
    register(KernelImpl("aten._weight_int4pack_mm", "linear.w4", "integer", "cuda",
                        prepare_cuda, run, (bf16,), lambda w, act=None: _supports(w, 8),
                        _available("_convert_weight_to_int4pack", "_weight_int4pack_mm"),
                        "bfloat16 activations x int4 group-wise weights (tinygemm)",
                        {"probe": ("int4", 32, None)}))


_register()
