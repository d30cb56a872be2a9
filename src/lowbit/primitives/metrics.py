"""Error metrics between a reference tensor and its quantized approximation.

Every function returns a Python ``float`` and raises :class:`~lowbit.errors.InputError`
when the two tensors' shapes differ, or a tensor is empty, on the ``meta`` device or holds
NaN/Inf.  Reductions run in float64
(complex128 for complex tensors), so results do not depend on the inputs' precision.
Complex tensors are measured by their complex magnitude (``|a - b|``), and ``cosine``
treats a complex tensor as the real vector of its (real, imaginary) pairs.

This module is layer L0: it imports only torch and :mod:`lowbit.errors`, so that
records, reports and every layer above can use it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError

#: A reference value is "significant" for :func:`relative_error_pct` when
#: ``|ref| > SIGNIFICANT_FRACTION * max|ref|``: relative error of near-zero values is noise.
SIGNIFICANT_FRACTION = 1e-3


def _as_wide(t: Any, name: str) -> torch.Tensor:
    """``t`` as a float64 (or complex128) tensor; rejects non-tensors and empty tensors."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}; "
                         f"wrap it with torch.as_tensor(...)")
    if t.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(t.shape)}); metrics need at least "
                         "one element. Fix: pass non-empty tensors")
    if t.device.type == "meta":
        raise InputError(f"{name} is on the 'meta' device (no data); pass a tensor with values")
    t = t.detach()
    t = t.to(torch.complex128) if t.is_complex() else t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"{name} holds {bad} NaN/Inf value(s) of {t.numel()}; a metric of them "
                         "would be NaN. Fix: find where the model produces them (e.g. an "
                         "overflowing float16 or an uncalibrated range) or drop those values")
    return t


def _pair(a: Any, b: Any, names: tuple[str, str] = ("a", "b")) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors widened, after checking that their shapes match exactly."""
    wa, wb = _as_wide(a, names[0]), _as_wide(b, names[1])
    if wa.shape != wb.shape:
        raise InputError(f"{names[0]} has shape {tuple(wa.shape)} but {names[1]} has shape "
                         f"{tuple(wb.shape)}; metrics compare tensors of the same shape "
                         "(dequantize the codes before comparing)")
    if wa.is_complex() != wb.is_complex():
        wa, wb = wa.to(torch.complex128), wb.to(torch.complex128)
    return wa, wb


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error ``mean(|a - b|^2)``."""
    wa, wb = _pair(a, b)
    return float((wa - wb).abs().square().mean())


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σ|ref|² / Σ|ref − approx|²)`` in dB.

    ``+inf`` when ``approx`` equals ``ref`` exactly (no noise), ``-inf`` when ``ref`` is all
    zeros but ``approx`` is not (no signal).
    """
    wr, wa = _pair(ref, approx, ("ref", "approx"))
    signal = float(wr.abs().square().sum())
    noise = float((wr - wa).abs().square().sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


#: The seeds call SQNR "SNR"; same quantity.
snr_db = sqnr_db


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors, in ``[-1, 1]``.

    Zero vectors: two all-zero tensors are identical, so their cosine is ``1.0``; an
    all-zero tensor against a non-zero one has no direction in common, so ``0.0``.
    """
    wa, wb = _pair(a, b)
    if wa.is_complex():
        wa, wb = torch.view_as_real(wa), torch.view_as_real(wb)
    fa, fb = wa.reshape(-1), wb.reshape(-1)
    na, nb = float(fa.norm()), float(fb.norm())
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    value = float(torch.dot(fa, fb)) / (na * nb)
    return max(-1.0, min(1.0, value))  # rounding can step just outside [-1, 1]


def max_abs_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference ``max |a - b|``."""
    wa, wb = _pair(a, b)
    return float((wa - wb).abs().max())


def mean_abs_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference ``mean |a - b|``."""
    wa, wb = _pair(a, b)
    return float((wa - wb).abs().mean())


def relative_error_pct(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Largest relative error over the significant values of ``ref``, in percent.

    ``100 · max |ref − approx| / |ref|`` over the elements with
    ``|ref| > SIGNIFICANT_FRACTION · max|ref|`` (``SIGNIFICANT_FRACTION = 1e-3``): values a
    thousand times smaller than the largest one are rounded to zero by any reasonable grid,
    and their relative error would say nothing.  If ``ref`` is all zeros there is no
    significant value: the result is ``0.0`` when ``approx`` is all zeros too, else ``inf``.
    """
    wr, wa = _pair(ref, approx, ("ref", "approx"))
    mag = wr.abs()
    peak = float(mag.max())
    if peak == 0.0:
        return 0.0 if not bool(wa.abs().gt(0).any()) else math.inf
    significant = mag > SIGNIFICANT_FRACTION * peak
    rel = (wr - wa).abs()[significant] / mag[significant]
    return 100.0 * float(rel.max())


def _looks_like_qparams(obj: Any) -> bool:
    return all(hasattr(obj, k) for k in ("scale", "zero_point", "qtype", "block_size"))


def _expand_blocks(p: torch.Tensor, shape: tuple[int, ...], block: tuple[int, ...]) -> torch.Tensor:
    """Repeat each per-block entry of ``p`` ``block[i]`` times along dimension ``i``."""
    if p.numel() == 1:  # one (s, z) for the whole tensor, whatever its stored rank
        return p.reshape((1,) * len(shape))
    if p.dim() != len(shape) or len(block) != len(shape):
        raise InputError(f"qparams of rank {p.dim()} with block_size {tuple(block)} do not fit "
                         f"a tensor of shape {shape}; pass the QParams made for this tensor")
    for dim, b in enumerate(block):
        if p.shape[dim] * b != shape[dim] and p.shape[dim] != 1:
            raise InputError(f"qparams of shape {tuple(p.shape)} with block_size {tuple(block)} "
                             f"do not fit a tensor of shape {shape}; pass the QParams made for "
                             "this tensor")
        if b > 1 and p.shape[dim] > 1:
            p = p.repeat_interleave(b, dim=dim)
    return p


def sat_ratio(x: torch.Tensor, clip: Any) -> float:
    """Fraction of the values of ``x`` that a range clips (the saturation ratio).

    ``clip`` is either

    * a ``QParams``: a value saturates when its unclamped code ``round(x·(1/s)) + z``
      (half to even, as in quantization) lies outside ``[qmin, qmax]`` of its block — exactly
      the values whose code is clamped and whose straight-through gradient is zero; or
    * a pair ``(lo, hi)`` of numbers or tensors broadcastable to ``x``: a value saturates
      when ``x < lo`` or ``x > hi``.
    """
    if not isinstance(x, torch.Tensor) or x.is_complex():
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"sat_ratio needs a real torch.Tensor x, got {what}; pass a tensor "
                         "(for complex tensors measure x.real and x.imag separately)")
    xw = _as_wide(x, "x")
    if _looks_like_qparams(clip):
        shape = tuple(xw.shape) or (1,)  # a 0-d tensor is quantized as shape (1,)
        xw = xw.reshape(shape)
        block = tuple(clip.block_size) or (1,)
        scale = _expand_blocks(clip.scale.detach().float(), shape, block)
        zero = _expand_blocks(clip.zero_point.detach().float(), shape, block)
        codes = torch.round(xw.float() * (1.0 / scale)) + zero
        out = (codes < clip.qtype.qmin) | (codes > clip.qtype.qmax)
        return float(out.double().mean())
    if not isinstance(clip, (tuple, list)) or len(clip) != 2:
        raise InputError(f"sat_ratio: clip must be a QParams or a pair (lo, hi), got "
                         f"{type(clip).__name__}; pass e.g. (x_min, x_max)")
    lo, hi = (torch.as_tensor(v, dtype=torch.float64) for v in clip)
    try:
        out = (xw < lo) | (xw > hi)
    except RuntimeError as exc:
        raise InputError(f"sat_ratio: lo of shape {tuple(lo.shape)} / hi of shape "
                         f"{tuple(hi.shape)} do not broadcast to x of shape {tuple(x.shape)}; "
                         "give one bound per tensor or a shape that broadcasts") from exc
    if out.shape != xw.shape:
        raise InputError(f"sat_ratio: lo/hi of shapes {tuple(lo.shape)}/{tuple(hi.shape)} would "
                         f"enlarge x of shape {tuple(x.shape)}; give bounds that broadcast to x")
    return float(out.double().mean())
