"""``prepare_linear``: a quantized weight made ready for its kernels, called like ``F.linear``.

::

    lin = prepare_linear(m.qdata, m.scale, m.zero_point, m.qtype, m.block_size,
                         act="dynamic_int8")        # or act=None for weight-only
    y = lin(x, m.bias)                              # y.dtype == x.dtype
    LayerRecord(name, "Linear", "quantized", **lin.record_fields())  # kernel + reason

Preparing makes the plan (:func:`~lowbit.kernels.dispatch.plan`; with ``auto`` each row
bucket is decided on its first call) and packs the weight once for each integer kernel the
plan runs.  A dense (float) weight, used
where a float GEMM is the fastest path, is built at the first call that needs it and kept
(``N·K`` floats: with many rows a quantized layer then holds more bytes than the float one;
``keep_dense=False`` trades that memory back for a dequantization per call);
:meth:`PreparedLinear.memory` reports what is held.  Each call takes the
rows ``M = x.numel() / K`` and runs the plan's kernel for ``M``.

Accuracy: every path computes ``F.linear(fake_quant(x), dequantize(w)) + bias``.  Integer
paths accumulate exactly; a path computes in bfloat16 only for bfloat16 inputs,
rounding inputs, weights and outputs to bfloat16 (relative 2⁻⁹ each), which the
tests hold within 1.5× of the quantization error the layer already has.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import torch

from ..errors import ConfigError, InputError, check_choice
from .act import ACT_IMPLS, ActQuantizer
from . import tuning
from .dispatch import Choice, Plan, plan
from .formats import ActFormat
from .registry import linear_op
from .weights import QuantWeight, quant_weight


def _tensor_bytes(obj, seen: set[int]) -> int:
    """Bytes of the tensors reachable from a kernel state (each storage counted once)."""
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if is_dataclass(obj):
        return sum(_tensor_bytes(getattr(obj, f.name), seen) for f in fields(obj))
    return 0


class PreparedLinear:
    """A quantized linear weight bound to its kernel plan; call it as ``lin(x, bias)``.

    Attributes: ``weight`` (:class:`QuantWeight`), ``op``, ``act`` (the input's
    :class:`~lowbit.kernels.formats.ActFormat`, or None for a float input),
    ``plan`` (for float32 inputs; other dtypes get their own), ``last`` (the
    :class:`Choice` of the latest call); ``path``, ``kernel`` and ``reason``
    summarise the plan for a :class:`~lowbit.records.LayerRecord`.
    """

    def __init__(self, weight: QuantWeight, act: "str | ActFormat | None" = None,
                 path: str = "auto", act_impl: str = "eager", keep_dense: bool = True,
                 plan: Plan | None = None):
        act = ActFormat.from_mode(act)
        check_choice("act_impl", act_impl, ACT_IMPLS,
                     fix="'eager' (plain ops) or 'compile' (torch.compile, cached per process)")
        if not isinstance(keep_dense, bool):
            raise ConfigError("keep_dense", keep_dense, "True or False",
                              fix="True keeps the dequantized weight once built (speed), False "
                                  "rebuilds it on each call that needs it (memory)")
        self.weight = weight
        self.act = act
        self.keep_dense = keep_dense
        self.requested_path = path
        self.op = linear_op(weight, act)
        # the run-time quantizer of a dynamic int8 input; a static or other input format is
        # quantized by the caller's ``act`` argument on each call
        self._act = (ActQuantizer(act.mode, act_impl)
                     if act is not None and not act.static and act.mode is not None else None)
        self._plans: dict[torch.dtype, Plan] = {} if plan is None else {torch.float32: plan}
        self._states: dict[tuple[int, torch.dtype], object] = {}
        self.plan = self.plan_for(torch.float32)
        for choice in self.plan.choices:  # pack once for the integer kernels
            if choice.path == "integer":
                self._state(choice)
        self.last: Choice | None = None

    # ------------------------------------------------------------------ planning

    def plan_for(self, dtype: torch.dtype) -> Plan:
        """The plan for inputs of ``dtype`` (made once per dtype)."""
        if dtype not in self._plans:
            self._plans[dtype] = plan(self.op, self.weight, dtype, self.requested_path,
                                      self.act)
        return self._plans[dtype]

    def _state(self, choice: Choice):
        if choice.path == "dense" and not self.keep_dense:
            return choice.impl.prepare(self.weight, choice.compute)
        return self._state_for(choice.impl, choice.compute)

    @property
    def path(self) -> str:
        """Paths of the plan's decided choices, e.g. ``"integer+dense"``."""
        return self.plan.summary()[0]

    @property
    def kernel(self) -> str:
        """Kernels of the plan per row range (and what is still to be measured)."""
        return self.plan.summary()[1]

    @property
    def reason(self) -> str:
        """Why each kernel was chosen."""
        return self.plan.summary()[2]

    def record_fields(self) -> dict:
        """``path``, ``kernel`` and ``kernel_reason`` for this layer's
        :class:`~lowbit.records.LayerRecord` (``LayerRecord(..., **lin.record_fields())``)."""
        return {"kernel_path": self.path, "kernel": self.kernel, "kernel_reason": self.reason}

    def memory(self) -> dict[str, int]:
        """Bytes: ``stored`` (qdata, scale, zero_point) and ``extra`` (packed copies and
        dense weights built so far)."""
        seen = {t.untyped_storage().data_ptr() for t in
                (self.weight.qdata, self.weight.scale, self.weight.zero_point)}
        extra = sum(_tensor_bytes(s, seen) for s in self._states.values())
        return {"stored": self.weight.stored_nbytes(), "extra": extra}

    # ------------------------------------------------------------------ running

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                 act: ActQuantizer | None = None) -> torch.Tensor:
        """``F.linear(fake_quant(x), dequantize(w), bias)`` on the planned kernel.

        ``x`` is ``[..., K]`` (float); the result is ``[..., N]`` in ``x``'s dtype.  ``act``
        overrides the activation quantizer (conv uses it for per-tensor qparams).
        """
        w = self.weight
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError(f"x must be a float tensor; got "
                             f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() == 0 or x.shape[-1] != w.k:
            raise InputError(f"x has shape {tuple(x.shape)} but the weight takes K={w.k} "
                             f"inputs in its last dimension; pass [..., {w.k}]")
        if x.device != w.device:
            raise InputError(f"x is on {x.device} but the weight is on {w.device}; move one")
        if bias is not None and (bias.shape != (w.n,) or not bias.is_floating_point()):
            raise InputError(f"bias has shape {tuple(bias.shape)} and dtype {bias.dtype}; "
                             f"pass a float [{w.n}] tensor or None")
        x2d = x.reshape(-1, w.k)
        if x2d.shape[0] == 0:
            return x.new_zeros(*x.shape[:-1], w.n)
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        choice = self.plan_for(x.dtype).select(x2d.shape[0])
        self.last = choice
        y = choice.impl.run(self._state(choice), x2d, bias, act or self._act)
        return y.reshape(*x.shape[:-1], w.n)

    # ------------------------------------------------------------------ compiling

    def traceable(self, dtype: torch.dtype = torch.float32) -> "TracedLinear":
        """A :class:`TracedLinear` for inputs of ``dtype``: a plan among the kernels
        ``torch.compile`` can trace, every row bucket decided now (measured or read from the
        tuning cache), every chosen kernel packed, so that ``torch.compile`` traces plain
        tensor code with no planning in it."""
        p = plan(self.op, self.weight, dtype, self.requested_path, self.act, traced=True)
        p.decide(tuning.ROW_BUCKETS)
        merged: list[list] = []
        for c in p.choices:  # adjacent buckets with one kernel become one row range
            if merged and merged[-1][2] is c.impl and merged[-1][3] == c.compute:
                merged[-1][1] = c.max_rows
            else:
                merged.append([c.min_rows, c.max_rows, c.impl, c.compute])
        ranges = tuple((lo, hi, impl.run, self._state_for(impl, compute), impl.name)
                       for lo, hi, impl, compute in merged)
        return TracedLinear(self.weight.k, self.weight.n, dtype, ranges, self._act)

    def _state_for(self, impl, compute):
        key = (id(impl), compute)
        if key not in self._states:
            self._states[key] = impl.prepare(self.weight, compute)
        return self._states[key]

    def __repr__(self) -> str:
        return (f"PreparedLinear(op={self.op}, N={self.weight.n}, K={self.weight.k}, "
                f"qtype={self.weight.qtype.name}, kernel={self.kernel!r})")


class TracedLinear:
    """A layer's kernels frozen for ``torch.compile``: ``(min_rows, max_rows, run, state,
    name)`` per row range and the activation quantizer; calling it selects the range with plain
    integer comparisons (``torch.compile`` specialises on them) and runs that kernel.  Made
    by :meth:`PreparedLinear.traceable`; it holds the packed weights, not the plan."""

    def __init__(self, k: int, n: int, dtype: torch.dtype, ranges: tuple, act):
        self.k, self.n, self.dtype, self.ranges, self.act = k, n, dtype, ranges, act

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                 act: ActQuantizer | None = None) -> torch.Tensor:
        """``F.linear(fake_quant(x), dequantize(w), bias)`` on the frozen kernel for ``x``'s
        rows; ``x`` ``[..., K]`` in :attr:`dtype`."""
        x2d = x.reshape(-1, self.k)
        rows = x2d.shape[0]
        for lo, hi, run, state, _ in self.ranges:
            if rows >= lo and (hi is None or rows < hi):
                y = run(state, x2d.contiguous(), bias, act or self.act)
                return y.reshape(*x.shape[:-1], self.n)
        raise AssertionError(f"no row range holds {rows} rows")  # the ranges cover 0..inf

    def describe(self) -> str:
        """The frozen kernels per row range, e.g. ``"rows 0-7: aten._int_mm; rows>=8: ..."``."""
        return "; ".join((f"rows {lo}-{hi - 1}" if hi is not None else f"rows>={lo}") +
                         f": {name}" for lo, hi, _, _, name in self.ranges)


def prepare_linear(qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qtype,
                   block_size, *, act: "str | ActFormat | None" = None, path: str = "auto",
                   act_impl: str = "eager", keep_dense: bool = True,
                   symmetric: bool | None = None, plan: Plan | None = None,
                   k: int | None = None) -> PreparedLinear:
    """Bind a quantized weight ``[N, K]`` (lowbit.nn's storage) to its kernels.

    act: None (weight-only: the input stays float), ``"dynamic_int8"`` (per-token int8
    activations), ``"dynamic_int8_tensor"`` (one scale per input tensor), or an
    :class:`~lowbit.kernels.formats.ActFormat` (a static or other format: the caller then
    passes the quantizer on each call).
    symmetric: the weight's scheme fixes zero points at 0 (None: read from the zero points).
    plan: a plan already made for float32 inputs (by :func:`~lowbit.kernels.dispatch.plan`
    with the same weight, format and path), reused instead of planning again.
    path: ``"auto"`` (chosen per row count by :func:`~lowbit.kernels.dispatch.plan`), or force ``"integer"``,
    ``"dense"`` or ``"reference"`` (:class:`KernelUnavailableError` if it cannot run).
    act_impl: ``"eager"`` or ``"compile"`` (a cached ``torch.compile`` of the activation
    quantizer, for the int8 GEMM path).
    keep_dense: keep the dequantized weight of the dense path once built (``N·K`` floats;
    the default, for speed) or rebuild it on every call that takes the dense path (memory).
    k: the input count ``K`` (needed only for packed codes whose last group is ragged).
    """
    return PreparedLinear(quant_weight(qdata, scale, zero_point, qtype, block_size, symmetric,
                                       k),
                          act, path, act_impl, keep_dense, plan)
