"""Dynamic int8 activation quantization for the W8A8 kernels.

An activation ``x`` viewed as rows ``[M, K]`` is quantized at run time to int8 AFFINE codes,
exactly as ``lowbit.primitives.affine.choose_qparams(x, int8, AFFINE, granularity)`` and
``quantize`` do (bit for bit; the tests hold it to that)::

    lo = min(min(x), 0),  hi = max(max(x), 0)          per row (or per tensor)
    s  = max((hi − lo) / 255, EPS)
    z  = clamp(−128 − round(lo / s), −128, 127)
    q  = clamp(round(x · (1/s)) + z, −128, 127)

The modes are registered in :data:`ACT_MODES` (name -> granularity): ``dynamic_int8`` is one
``(s, z)`` per row (per token) and ``dynamic_int8_tensor`` one for the whole tensor.

Speed: written as eager ops the quantization makes about five passes over ``x``, which
costs a large part of what an int8 GEMM gains at few rows.  :func:`quantize_act` can run a
``torch.compile``-d copy of the same function (``impl="compile"``): compiled once per
process and cached, used only when asked for, and replaced by the eager function (with a
logged warning) if compilation fails.  The eager function is always the definition.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError, check_choice
from ..primitives.affine import EPS, choose_qparams, fake_quantize
from ..types import Granularity, PerTensor, PerToken, QParams, Scheme, int8

log = logging.getLogger(__name__)

#: Activation quantization modes of the W8A8 kernels: name -> granularity of ``(s, z)``.
ACT_MODES: dict[str, Callable[[], Granularity]] = {
    "dynamic_int8": PerToken,
    "dynamic_int8_tensor": PerTensor,
}

#: How :func:`quantize_act` runs: plain eager ops, or a cached ``torch.compile`` of them.
ACT_IMPLS = ("eager", "compile")

_QMIN, _QMAX = -128.0, 127.0


def check_act(act) -> str | None:
    """Validate an ``act`` argument: None (float input) or a key of :data:`ACT_MODES`."""
    if act is not None:
        check_choice("act", act, tuple(ACT_MODES),
                     fix="act=None keeps the input float (weight-only); 'dynamic_int8' "
                         "quantizes each row (token) at run time, 'dynamic_int8_tensor' the "
                         "whole input with one scale")
    return act


def _qparams_rows(x: torch.Tensor, per_token: bool):
    """``(scale, zero)`` float32 ``[M, 1]`` (or ``[1, 1]``) of rows ``x`` (few, in-place ops:
    at a handful of rows the per-op overhead, not the data, is the cost)."""
    if per_token:
        lo, hi = torch.aminmax(x, dim=-1, keepdim=True)  # [M, 1]
    else:
        lo, hi = torch.aminmax(x)
        lo, hi = lo.reshape(1, 1), hi.reshape(1, 1)  # [1, 1]
    lo = lo.clamp_(max=0.0)
    scale = hi.clamp_(min=0.0).sub_(lo).div_(_QMAX - _QMIN).clamp_(min=EPS)
    zero = lo.div_(scale).round_().neg_().add_(_QMIN).clamp_(_QMIN, _QMAX)  # qmin − round(lo/s)
    return scale, zero


def _quantize_rows(x: torch.Tensor, per_token: bool):
    """Eager definition: ``x`` float32 ``[M, K]`` -> (int8 codes, scale, zero)."""
    scale, zero = _qparams_rows(x, per_token)
    q = torch.round(x * (1.0 / scale)).add_(zero).clamp_(_QMIN, _QMAX)  # [M, K]
    return q.to(torch.int8), scale, zero


def _centered(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``q − z`` as float32: ``clamp(round(x·(1/s)), qmin − z, qmax − z)`` — the same integers
    as ``clamp(round(x·(1/s)) + z, qmin, qmax) − z`` (exact in float32), two passes fewer."""
    return torch.round(x * (1.0 / scale)).clamp_(_QMIN - zero, _QMAX - zero)


def _centered_rows(x: torch.Tensor, per_token: bool):
    """``(q − z, scale, zero)`` of rows ``x``, the codes centred on their zero point."""
    scale, zero = _qparams_rows(x, per_token)
    return _centered(x, scale, zero), scale, zero


def _fake_rows(x: torch.Tensor, per_token: bool):
    """``(q − z)·s`` float32 ``[M, K]`` without the int8 round trip (same values)."""
    centered, scale, zero = _centered_rows(x, per_token)
    return centered.mul_(scale), scale, zero


_EAGER = {"quantize": _quantize_rows, "fake": _fake_rows, "centered": _centered_rows}
_compiled: dict[str, Callable | None] = {}
_compile_lock = threading.Lock()


def _compiled_fn(name: str) -> Callable | None:
    """The process-wide compiled copy of ``_EAGER[name]`` (None if compiling failed)."""
    with _compile_lock:
        if name not in _compiled:
            try:
                _compiled[name] = torch.compile(_EAGER[name], dynamic=True)
            except Exception as exc:  # noqa: BLE001 - any failure means: use eager
                log.warning("torch.compile of the activation quantizer failed (%s); using the "
                            "eager quantizer", exc)
                _compiled[name] = None
        return _compiled[name]


def _run(name: str, x: torch.Tensor, mode: str, impl: str):
    check_act(mode)
    check_choice("act_impl", impl, ACT_IMPLS,
                 fix="'eager' (plain ops) or 'compile' (torch.compile, cached per process)")
    if x.dim() != 2:
        raise InputError(f"quantize_act: x has shape {tuple(x.shape)}; pass rows [M, K]")
    xf = x if x.dtype == torch.float32 else x.float()
    per_token = ACT_MODES[mode] is PerToken
    eager = _EAGER[name]
    # inside an outer torch.compile the eager definition is traced into the caller's graph
    compiled = impl == "compile" and not torch.compiler.is_compiling()
    fn = (_compiled_fn(name) or eager) if compiled else eager
    try:
        out = fn(xf, per_token)
    except Exception as exc:  # noqa: BLE001 - a compiled function that fails falls back
        if fn is eager:
            raise
        log.warning("compiled activation quantizer failed (%s); using the eager one", exc)
        with _compile_lock:
            _compiled[name] = None
        out = eager(xf, per_token)
    # NaN/Inf anywhere in a row reaches its scale (aminmax and clamp propagate NaN).  Under
    # torch.compile the check (a host sync per layer) is left out: lowbit.compile says so.
    if not torch.compiler.is_compiling() and not math.isfinite(float(out[1].amax())):
        raise InputError("activation contains NaN/Inf values; quantization needs finite "
                         "values — check the model's inputs or the layer producing them")
    return out


def quantize_act(x: torch.Tensor, mode: str = "dynamic_int8", impl: str = "eager"):
    """Quantize activation rows ``x`` ``[M, K]`` to int8.

    Returns ``(q, scale, zero)``: int8 codes ``[M, K]`` and float32 ``scale``/``zero``
    ``[M, 1]`` (per token) or ``[1, 1]`` (per tensor), zero holding integers.  Raises
    :class:`InputError` if ``x`` holds NaN or Inf.
    """
    return _run("quantize", x, mode, impl)


def centered_act(x: torch.Tensor, mode: str = "dynamic_int8", impl: str = "eager"):
    """``(q − z, scale, zero)``: the codes of :func:`quantize_act` minus their zero point,
    float32 ``[M, K]`` integers in ``[−255, 255]``."""
    return _run("centered", x, mode, impl)


def fake_quantize_act(x: torch.Tensor, mode: str = "dynamic_int8",
                      impl: str = "eager") -> torch.Tensor:
    """``(q − z)·s`` of :func:`quantize_act`, float32 ``[M, K]`` (equals lowbit's
    ``fake_quantize`` with the same qparams bit for bit)."""
    return _run("fake", x, mode, impl)[0]


@dataclass(frozen=True, eq=False)
class ActQuantizer:
    """How a kernel quantizes its input rows: ``mode`` (a key of :data:`ACT_MODES`) and
    ``impl`` (eager or compiled).  With ``scale``/``zero`` set (float32 ``[1, 1]``) the
    qparams are fixed instead of computed from the rows: :meth:`for_tensor` computes them
    once from a whole tensor, so that a conv's unfolded patches quantize exactly as the
    input they were cut from."""

    mode: str = "dynamic_int8"
    impl: str = "eager"
    scale: torch.Tensor | None = None
    zero: torch.Tensor | None = None

    @classmethod
    def for_tensor(cls, x: torch.Tensor, impl: str = "eager") -> "ActQuantizer":
        """Per-tensor qparams of ``x`` (any shape), fixed for every row cut from it."""
        _, scale, zero = quantize_act(x.reshape(1, -1), "dynamic_int8_tensor", impl)
        return cls("dynamic_int8_tensor", impl, scale, zero)

    def quantize(self, x: torch.Tensor):
        """``(q, scale, zero)`` of rows ``x`` ``[M, K]`` (see :func:`quantize_act`)."""
        if self.scale is None:
            return quantize_act(x, self.mode, self.impl)
        xf = x if x.dtype == torch.float32 else x.float()
        q = torch.round(xf * (1.0 / self.scale)).add_(self.zero).clamp_(_QMIN, _QMAX)
        return q.to(torch.int8), self.scale, self.zero

    def centered(self, x: torch.Tensor):
        """``(q − z, scale, zero)``, ``q − z`` float32 ``[M, K]`` (see :func:`centered_act`)."""
        if self.scale is None:
            return centered_act(x, self.mode, self.impl)
        xf = x if x.dtype == torch.float32 else x.float()
        return _centered(xf, self.scale, self.zero), self.scale, self.zero

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """``(q − z)·s`` float32 ``[M, K]`` of the fast quantizer."""
        if self.scale is None:
            return fake_quantize_act(x, self.mode, self.impl)
        centered, scale, _ = self.centered(x)
        return centered.mul_(scale)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The same through lowbit's primitives (``choose_qparams`` + ``fake_quantize``):
        the slow twin the kernels are held against.  float32 ``[M, K]``."""
        xf = x.float()
        if self.scale is None:
            qp = choose_qparams(xf, int8, Scheme.AFFINE, ACT_MODES[self.mode]())
        else:
            qp = QParams(self.scale, self.zero.to(torch.int32), int8, tuple(xf.shape))
        return fake_quantize(xf, qp)
