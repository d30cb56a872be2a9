"""Native int8 kernels: W8A8 on ``torch._int_mm`` and weight-only on ``torch._weight_int8pack_mm``.

Both take one scale per output channel (block ``(1, K)``) and any grid of at most 8 bits: the
codes are shifted into int8 once (uint8 ``q`` becomes ``q − 128`` with ``z − 128``), which
leaves ``q − z`` unchanged.

W8A8 (``linear.w8a8``): the input rows are quantized per token (:mod:`.act`), then with exact
int32 accumulation ::

    Σ_k (q_k − zx)(w_k − zw) = q·wᵀ − zx ⊗ (Σ_k w_k − K·zw) − (Σ_k q_k) ⊗ zw
    y = sx ⊗ sw · that  (+ bias)

The second operand of ``_int_mm`` is the transpose *view* of the contiguous ``[N, K]``
codes (a column-major ``[K, N]``, strides ``(1, K)``, faster than a contiguous ``[K, N]``
copy in ``benchmarks/bench_linear.py``).  The
layout is asserted by ``tests/kernels/test_int8.py``.  On CUDA ``_int_mm`` needs more than 16
rows (the input is padded) and ``K``, ``N`` multiples of 8.

W8A8 on CPUs without VNNI/AMX, where ``_int_mm`` falls back to a plain loop (3–30× slower
than float32 here, worse with more rows): the activation codes ``q − zx`` (integers in [−255, 255],
exact in bfloat16) go through the weight-only kernel ``_weight_int8pack_mm`` with unit scales,
then ``y = sx ⊗ sw · acc``; exact products, float32 accumulation, a bfloat16 output (relative
2⁻⁹).  It needs symmetric weights (zero points 0).

Weight-only (``linear.w8``): ``_weight_int8pack_mm(x, w, s)`` computes ``x·(w·s)ᵀ``; it is
fast only with bfloat16 activations, so bfloat16 is its preferred compute dtype (rounding the
input and the scales to bfloat16: relative 2⁻⁹, small against int8 weight rounding).  Non-zero
weight zero points are corrected with ``− (Σ_k x_k) ⊗ (sw·zw)``.  torch 2.13's CPU kernel
crashes from 3 rows up when ``K`` is not a multiple of 8, so such a weight is padded to the
next multiple of 8 once when packing (zero codes) and each call pads its input rows with
zeros: the padded products are exactly 0, and the zero-point correction sums the real
inputs only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .formats import act_kernel_reason
from .registry import KernelImpl, register
from .weights import QuantWeight

#: K above which the W8A8 int32 accumulator could overflow with the zero-point terms
#: (|Σ (q − zx)(w − zw)| and its partial sums stay below 2³¹ up to about 26 000).
MAX_K_W8A8 = 16384


def _w8_supports(w: QuantWeight, act=None) -> str | None:
    return _per_channel(w)  # any K: padded to a multiple of 8 (see the module docstring)


def _k_pad(k: int) -> int:
    """Zero columns that bring ``K`` to a multiple of 8 (torch 2.13's CPU kernel reads out
    of bounds otherwise, from 3 rows up)."""
    return -k % 8


def _pad_columns(t: torch.Tensor, pad: int) -> torch.Tensor:
    """``t`` ``[R, K]`` with ``pad`` zero columns appended (``t`` itself when ``pad`` is 0)."""
    return torch.nn.functional.pad(t, (0, pad)) if pad else t


def _per_channel(w: QuantWeight) -> str | None:
    if not w.per_channel:
        return (f"int8 kernels take one scale per output channel (block (1, {w.k})); this "
                f"weight has block {w.block_size}")
    return None


def int8_codes(w: QuantWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes shifted into int8, contiguous ``[N, K]``, and the shifted zero points int32 ``[N]``."""
    shift = w.qtype.qmin + 128 if w.qtype.qmax > 127 else 0
    codes = w.codes()
    if shift:
        codes = codes.to(torch.int16) - shift
    zero = w.zero_point.reshape(-1).to(torch.int32) - shift
    return codes.to(torch.int8).contiguous(), zero


def _has_op(name: str):
    def available(device: torch.device) -> str | None:
        """None when this torch has the op."""
        if not hasattr(torch, name):
            return f"torch {torch.__version__} has no torch.{name}"
        return None
    return available


# ------------------------------------------------------------------------------- W8A8


@dataclass
class W8A8State:
    """What the W8A8 kernel reads on every call, packed once."""

    b: torch.Tensor          # int8 [K, N], the transpose view of contiguous [N, K] codes
    colsum: torch.Tensor     # int32 [N]: Σ_k w − K·zw
    zw: torch.Tensor | None  # int32 [N], None when all zero
    sw: torch.Tensor         # float32 [N]
    min_rows: int            # pad the input to at least this many rows (CUDA: 17)


def prepare_w8a8(w: QuantWeight, compute_dtype: torch.dtype, min_rows: int = 1) -> W8A8State:
    """Pack once for ``_int_mm``: int8 codes and their column sums."""
    codes, zw = int8_codes(w)  # [N, K], [N]
    colsum = codes.sum(dim=1, dtype=torch.int32) - w.k * zw
    return W8A8State(codes.t(), colsum, zw if bool(zw.any()) else None,
                     w.scale.reshape(-1).float(), min_rows)


def run_w8a8(st: W8A8State, x: torch.Tensor, bias, act) -> torch.Tensor:
    """``[M, K]`` rows -> ``[M, N]`` through int8 activations × int8 weights."""
    q, sx, zx = act.quantize(x)  # int8 [M, K], float32 [M|1, 1]
    m = q.shape[0]
    if m < st.min_rows:
        q = torch.cat([q, q.new_zeros(st.min_rows - m, q.shape[1])])
    acc = torch._int_mm(q, st.b)[:m]  # int32 [M, N], exact
    zx_i = zx.to(torch.int32).reshape(-1).expand(m)
    acc = acc.addr_(zx_i, st.colsum, alpha=-1)
    if st.zw is not None:
        acc = acc.addr_(q[:m].sum(dim=1, dtype=torch.int32), st.zw, alpha=-1)
    y = acc.to(torch.float32).mul_(sx).mul_(st.sw)  # [M, N]
    if bias is not None:
        y = y.add_(bias)
    return y.to(x.dtype)


def _w8a8_supports(w: QuantWeight, act=None) -> str | None:
    reason = act_kernel_reason(act)
    if reason is not None:
        return reason
    if w.k > MAX_K_W8A8:
        return f"K={w.k} > {MAX_K_W8A8} could overflow the int32 accumulator"
    return _per_channel(w)


def _w8a8_cuda_supports(w: QuantWeight, act=None) -> str | None:
    if w.k % 8 or w.n % 8:
        return f"CUDA _int_mm needs K and N multiples of 8 (K={w.k}, N={w.n})"
    return _w8a8_supports(w, act)


# ------------------------------------------------------------------ W8A8 on the weight-only kernel


@dataclass
class A8CodesState:
    """W8A8 on ``_weight_int8pack_mm``: int8 weights and unit scales, packed once."""

    wq: torch.Tensor     # int8 [N, K + pad] contiguous
    ones: torch.Tensor   # bfloat16 [N], the kernel's scales
    sw: torch.Tensor     # float32 [N]
    pad: int = 0         # zero columns bringing K to a multiple of 8


def prepare_w8a8_codes(w: QuantWeight, compute_dtype: torch.dtype) -> A8CodesState:
    """Pack once: the codes shifted into int8 (zero points are 0, see ``supports``)."""
    codes, _ = int8_codes(w)
    pad = _k_pad(w.k)
    return A8CodesState(_pad_columns(codes, pad).contiguous(),
                        torch.ones(w.n, dtype=torch.bfloat16, device=w.device),
                        w.scale.reshape(-1).float(), pad)


def run_w8a8_codes(st: A8CodesState, x: torch.Tensor, bias, act) -> torch.Tensor:
    """Int8 activation codes × int8 weights on the weight-only kernel.

    ``q − zx`` is an integer in ``[−255, 255]``, exact in bfloat16, and each product with an
    int8 weight is exact in the kernel's float32 accumulator: only the kernel's bfloat16
    output rounds (relative 2⁻⁹).  Then ``y = sx ⊗ sw · Σ (q − zx)·w``.
    """
    centered, sx, _ = act.centered(x)  # q − zx: float32 [M, K] integers, [M|1, 1]
    centered = _pad_columns(centered.to(torch.bfloat16), st.pad)  # exact: |q − zx| <= 255
    acc = torch._weight_int8pack_mm(centered, st.wq, st.ones)  # [M, N] bfloat16
    y = acc.float().mul_(sx).mul_(st.sw)
    if bias is not None:
        y = y.add_(bias)
    return y.to(x.dtype)


def _a8_codes_supports(w: QuantWeight, act=None) -> str | None:
    reason = act_kernel_reason(act)
    if reason is not None:
        return reason
    if not w.symmetric:
        return ("weight zero points must be 0 (a zero-point correction after the bfloat16 "
                "output would cancel catastrophically)")
    return _w8_supports(w)


# ------------------------------------------------------------------------------- weight-only


@dataclass
class W8State:
    """What the int8 weight-only kernel reads on every call, packed once."""

    wq: torch.Tensor                # int8 [N, K + pad] contiguous
    scale: torch.Tensor             # [N] in the compute dtype
    zero_corr: torch.Tensor | None  # float32 [N]: sw·zw, None when all zero
    compute: torch.dtype
    pad: int = 0                    # zero columns bringing K to a multiple of 8


def prepare_w8(w: QuantWeight, compute_dtype: torch.dtype) -> W8State:
    """Pack once for ``_weight_int8pack_mm`` (``K`` padded to a multiple of 8)."""
    codes, zw = int8_codes(w)
    sw = w.scale.reshape(-1).float()
    corr = sw * zw.float() if bool(zw.any()) else None
    pad = _k_pad(w.k)
    return W8State(_pad_columns(codes, pad).contiguous(), sw.to(compute_dtype), corr,
                   compute_dtype, pad)


def run_w8(st: W8State, x: torch.Tensor, bias, act) -> torch.Tensor:
    """``[M, K]`` rows -> ``[M, N]``: float activations × int8 weights."""
    xc = _pad_columns(x.to(st.compute), st.pad)
    y = torch._weight_int8pack_mm(xc, st.wq, st.scale)  # [M, N]
    y = y.to(x.dtype)
    if st.zero_corr is not None:
        y = y - torch.outer(x.float().sum(dim=1), st.zero_corr).to(x.dtype)
    if bias is not None:
        y = y.add_(bias)
    return y


def _register() -> None:
    bf16, f32, f16 = torch.bfloat16, torch.float32, torch.float16
    register(KernelImpl("aten._int_mm", "linear.w8a8", "integer", "cpu", prepare_w8a8, run_w8a8,
                        (f32,), _w8a8_supports, _has_op("_int_mm"),
                        "int8 x int8 -> int32 GEMM (oneDNN VNNI/AMX), per-token activations",
                        {"probe": ("int8", None, "dynamic_int8")}))
    register(KernelImpl("aten._weight_int8pack_mm(a8 codes)", "linear.w8a8", "integer", "cpu",
                        prepare_w8a8_codes, run_w8a8_codes, (bf16,), _a8_codes_supports,
                        _has_op("_weight_int8pack_mm"),
                        "int8 activation codes (exact in bfloat16) x int8 weights on the "
                        "weight-only kernel: for CPUs where _int_mm has no fast path",
                        {"probe": ("int8", None, "dynamic_int8")}))
    register(KernelImpl("aten._int_mm", "linear.w8a8", "integer", "cuda",
                        lambda w, dt: prepare_w8a8(w, dt, min_rows=17), run_w8a8,
                        (f32,), _w8a8_cuda_supports, _has_op("_int_mm"),
                        "int8 x int8 -> int32 GEMM (cuBLASLt), per-token activations",
                        {"probe": ("int8", None, "dynamic_int8")}))
    for device in ("cpu", "cuda"):
        register(KernelImpl("aten._weight_int8pack_mm", "linear.w8", "integer", device,
                            prepare_w8, run_w8, (bf16, f16, f32), _w8_supports,
                            _has_op("_weight_int8pack_mm"),
                            "float activations x int8 per-channel weights",
                            {"probe": ("int8", None, None)}))


_register()
