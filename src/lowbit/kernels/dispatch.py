"""The one place that chooses a kernel: op, formats, input dtype, device and number of rows.

:func:`plan` turns ``(op, weight, input dtype, path, act)`` into a :class:`Plan`, which a
:class:`~lowbit.kernels.linear.PreparedLinear` asks for the :class:`Choice` of each call's row
count.  A forced path (``"integer"``, ``"dense"``, ``"reference"``) runs one kernel for every
row count or raises :class:`KernelUnavailableError`.  ``path="auto"`` decides per row bucket
(:mod:`lowbit.kernels.tuning`), the first time a bucket is used: every candidate that supports
the formats and computes with the same numerics as the float path is timed on this machine,
the fastest wins, and the decision is cached on disk.

Same numerics: a candidate may compute in the input's dtype or in float32, never in a
narrower dtype the caller did not choose (a float32 model is never rounded through bfloat16
because of where it was tuned); integer kernels accumulate exactly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import check_kernel_path
from ..errors import KernelUnavailableError
from . import tuning
from .act import ActQuantizer
from .formats import ActFormat
from .probe import probe
from .registry import KernelImpl, candidates, find, traceable
from .weights import QuantWeight


@dataclass(frozen=True)
class Choice:
    """One row range of a plan: rows in ``[min_rows, max_rows)`` run ``impl`` in ``compute``.

    source: ``forced``, ``measured`` (now), ``cache`` or ``rule``; speedup: the float path's
    time over this kernel's where measured."""

    min_rows: int
    max_rows: int | None
    impl: KernelImpl
    compute: torch.dtype
    reason: str
    source: str = "rule"
    speedup: float | None = None

    @property
    def path(self) -> str:
        """The path of the chosen implementation."""
        return self.impl.path

    def describe(self) -> str:
        """``"aten._int_mm[float32] rows 8-15 (2.10x float)"``-style summary."""
        rows = f"rows>={self.min_rows}" if self.max_rows is None else \
            f"rows {self.min_rows}-{self.max_rows - 1}"
        speed = "" if self.speedup is None else f" ({self.speedup:.2f}x float)"
        return f"{self.impl.name}[{str(self.compute).replace('torch.', '')}] {rows}{speed}"


class Plan:
    """The choice for every row count: one fixed choice, or one per row bucket decided on the
    bucket's first use (:meth:`select`) or ahead of time (:meth:`decide`)."""

    def __init__(self, op: str, path: str, fixed: Choice | None = None,
                 decide_bucket: Callable[[int], Choice] | None = None):
        assert (fixed is None) != (decide_bucket is None)
        self.op, self.path = op, path
        self._fixed = fixed
        self._decide_bucket = decide_bucket
        self._buckets: dict[int, Choice] = {}
        self._lock = threading.Lock()

    def select(self, rows: int) -> Choice:
        """The choice for an input of ``rows`` rows (deciding its bucket if new)."""
        if self._fixed is not None:
            return self._fixed
        index = tuning.bucket_of(rows)
        choice = self._buckets.get(index)
        if choice is None:
            with self._lock:
                choice = self._buckets.get(index)
                if choice is None:
                    choice = self._buckets[index] = self._decide_bucket(index)
        return choice

    def decide(self, rows) -> "Plan":
        """Decide the buckets of every row count in ``rows`` now (e.g. before recording)."""
        for r in rows:
            self.select(int(r))
        return self

    @property
    def undecided(self) -> bool:
        """True while some row bucket has not been decided yet."""
        return self._fixed is None and len(self._buckets) < len(tuning.ROW_BUCKETS)

    @property
    def choices(self) -> tuple[Choice, ...]:
        """The choices decided so far, ascending by rows."""
        if self._fixed is not None:
            return (self._fixed,)
        return tuple(self._buckets[i] for i in sorted(self._buckets))

    def summary(self) -> tuple[str, str, str]:
        """``(paths, kernels, reasons)`` of the decided choices, for a LayerRecord."""
        choices = self.choices
        paths = "+".join(dict.fromkeys(c.path for c in choices)) or self.path
        kernels = "; ".join(c.describe() for c in choices)
        reasons = "; ".join(dict.fromkeys(c.reason for c in choices))
        if self.undecided:
            later = "other row counts: measured on first use" if choices else \
                "auto: each row count's kernel is measured on first use (then cached)"
            kernels = f"{kernels}; {later}" if kernels else later
            reasons = reasons or later
        return paths, kernels, reasons


def unusable(impl: KernelImpl | None, weight: QuantWeight, act=None,
             traced: bool = False) -> str | None:
    """None if ``impl`` can run ``weight`` with input format ``act`` on its device (integer
    kernels are probed once; with ``traced``, inside a ``torch.compile`` graph), else the
    reason."""
    if impl is None:
        return "no implementation is registered"
    if traced and not traceable(impl):
        return "torch.compile cannot trace it"
    reason = impl.available(weight.device) or impl.supports(weight, act)
    if reason is None and impl.path == "integer":
        reason = probe(impl, weight.device)
    return reason


def same_numerics(compute: torch.dtype, x_dtype: torch.dtype) -> bool:
    """A kernel computing in ``compute`` keeps an ``x_dtype`` input's numerics: the input's
    own dtype or float32."""
    return compute == x_dtype or compute == torch.float32


def _compute_for(impl: KernelImpl, x_dtype: torch.dtype) -> torch.dtype | None:
    for dt in (x_dtype, torch.float32):
        if dt in impl.compute_dtypes:
            return dt
    return None


def _forced(op: str, weight, x_dtype, path: str, act, traced: bool = False) -> Plan:
    reasons = []
    for impl in candidates(op, path, weight.device):
        reason = unusable(impl, weight, act, traced)
        compute = _compute_for(impl, x_dtype)
        if reason is None and compute is None:
            reason = (f"computes in {', '.join(str(d) for d in impl.compute_dtypes)}, not in "
                      f"the input's {x_dtype} or float32")
        if reason is None:
            return Plan(op, path, fixed=Choice(0, None, impl, compute,
                                               f"path={path!r} forced by the caller",
                                               source="forced"))
        reasons.append(f"{impl.name}: {reason}")
    raise KernelUnavailableError(
        f"path={path!r} is unavailable for {op} ({weight.qtype.name}, block "
        f"{weight.block_size}) on {weight.device}: "
        f"{'; '.join(reasons) or 'no implementation is registered'}. Fix: use "
        "path='auto' (chooses a kernel that runs here and records why), 'dense' or "
        "'reference'")


def plan(op: str, weight: QuantWeight, x_dtype: torch.dtype, path: str = "auto",
         act=None, traced: bool = False) -> Plan:
    """Choose the kernel of ``op`` for every row count (see the module docstring).

    act: the input's :class:`~lowbit.kernels.formats.ActFormat` (or an act mode string; None
    for a float input), which the candidates' ``supports`` read.  Raises
    :class:`ConfigError` for an unknown path and :class:`KernelUnavailableError` when a forced
    path cannot run this weight on its device.
    traced: only kernels ``torch.compile`` can trace compete (:func:`lowbit.compile`); their
    decisions are cached apart from the eager ones.
    """
    check_kernel_path(path)
    act = ActFormat.from_mode(act)
    if path != "auto":
        return _forced(op, weight, x_dtype, path, act, traced)
    dense = find(op, "dense", weight.device)
    if not op.startswith("linear."):  # only linear ops are timed so far
        compute = _compute_for(dense, x_dtype) or dense.compute_dtypes[0]
        return Plan(op, "auto", fixed=Choice(0, None, dense, compute,
                                             f"no measured choice for {op}: the float path"))
    return Plan(op, "auto", decide_bucket=_BucketDecider(op, weight, act, x_dtype, dense,
                                                         traced))


#: A candidate slower than this many times the float path in its first calls is not timed
#: further at that row count.
GIVE_UP = 3.0


class _BucketDecider:
    """Decides one row bucket of an ``auto`` plan: cache, else measure, else the float path."""

    def __init__(self, op, weight: QuantWeight, act: ActFormat | None, x_dtype, dense,
                 traced: bool = False):
        self.op, self.weight, self.act, self.x_dtype = op, weight, act, x_dtype
        self.traced = traced
        self.float_choice = (dense, _compute_for(dense, x_dtype) or torch.float32)
        self.excluded: list[str] = []
        self.cands = [self.float_choice]
        for impl in candidates(op, "integer", weight.device):
            reason = unusable(impl, weight, act, traced)
            compute = _compute_for(impl, x_dtype) if reason is None else None
            if reason is None and compute is None:
                reason = f"computes in {impl.compute_dtypes[0]}, not {x_dtype} or float32"
            if reason is None:
                self.cands.append((impl, compute))
            else:
                self.excluded.append(f"{impl.name}: {reason}")

    def key(self, index: int) -> str:
        w, act = self.weight, self.act
        return "|".join([self.op, w.device.type, w.qtype.name, f"b{w.block_size[0]}x"
                         f"{w.block_size[1]}", f"sym{int(w.symmetric)}",
                         act.describe() if act is not None else "float", f"N{w.n}", f"K{w.k}",
                         str(self.x_dtype).replace("torch.", ""),
                         f"M{tuning.ROW_BUCKETS[index]}"] + (["traced"] if self.traced else []))

    def __call__(self, index: int) -> Choice:
        lo, hi = tuning.bucket_span(index)
        excluded = f" (not candidates: {'; '.join(self.excluded)})" if self.excluded else ""
        if len(self.cands) == 1:
            impl, compute = self.float_choice
            return Choice(lo, hi, impl, compute, f"no integer kernel runs this layer here"
                          f"{excluded}: the float path", source="rule")
        key = self.key(index)
        decision = tuning.cache().get(key)
        found = None if decision is None else next(
            ((i, c) for i, c in self.cands if i.name == decision.impl
             and str(c).replace("torch.", "") == decision.compute), None)
        if found is not None:
            impl, compute = found
            return Choice(lo, hi, impl, compute, f"cache: {impl.name} fastest at "
                          f"M={tuning.ROW_BUCKETS[index]}", source="cache",
                          speedup=decision.speedup)
        if not tuning.tuning_enabled():
            impl, compute = self.float_choice
            return Choice(lo, hi, impl, compute, "kernel tuning is off "
                          "(LOWBIT_KERNEL_TUNING): the float path", source="rule")
        times = self._measure(tuning.ROW_BUCKETS[index])  # per candidate, float path first
        best = min(range(len(times)), key=times.__getitem__)
        impl, compute = self.cands[best]
        speedup = times[0] / times[best]
        tuning.cache().put(key, tuning.Decision(impl.name, impl.path,
                                                str(compute).replace("torch.", ""),
                                                round(speedup, 3), "measured"))
        return Choice(lo, hi, impl, compute, f"measured now: {impl.name} fastest at "
                      f"M={tuning.ROW_BUCKETS[index]} of {len(times)} candidates",
                      source="measured", speedup=speedup)

    def _measure(self, rows: int) -> list[float]:
        """Seconds per call of every candidate (in ``self.cands`` order) on ``rows`` rows."""
        w = self.weight
        gen = torch.Generator().manual_seed(rows)
        x = torch.randn(rows, w.k, generator=gen).to(device=w.device, dtype=self.x_dtype)
        act = None if self.act is None else ActQuantizer(self.act.mode or "dynamic_int8_tensor")
        times: list[float] = []
        for impl, compute in self.cands:  # the float path first: it bounds the others' time
            state = impl.prepare(w, compute)  # dropped after timing: the layer packs its own
            give_up = None if not times else GIVE_UP * times[0]
            with torch.inference_mode():
                times.append(tuning.time_candidate(lambda: impl.run(state, x, None, act),
                                                   give_up))
        return times
