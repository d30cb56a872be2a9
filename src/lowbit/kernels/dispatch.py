"""The one place that chooses a kernel: op, input dtype, device and number of rows.

:func:`plan` turns ``(op, weight, input dtype, backend)`` into a :class:`Plan`: row ranges,
each with a kernel, the dtype it computes in and the reason, which a
:class:`~lowbit.kernels.linear.PreparedLinear` follows on every call (``M`` = rows of the
input).  ``backend="auto"`` reads :data:`TABLE` for the machine (:func:`machine`); a forced
backend (``"native"``, ``"dense"``, ``"reference"``) is used for every row count or raises
:class:`KernelUnavailableError`.

The table (``benchmarks/bench_linear.py``; "small"/"large": weights under/over
:data:`LARGE_WEIGHT` elements; ``rows < T`` take the first kernel, the rest the second)::

    machine   op           size    rows < T: kernel (compute)                    rows >= T
    cpu.avx2  linear.w8    small   16: _weight_int8pack_mm (bf16)                F.linear f32
    cpu.avx2  linear.w8    large   32: _weight_int8pack_mm (bf16)                F.linear f32
    cpu.avx2  linear.w4    small   2-15: _weight_int4pack_mm_for_cpu (bf16)      F.linear f32
    cpu.avx2  linear.w4    large   32: _weight_int4pack_mm_for_cpu (bf16)        F.linear f32
    cpu.avx2  linear.w8a8  small   16: _weight_int8pack_mm(a8 codes) (bf16)      F.linear f32
    cpu.avx2  linear.w8a8  large   32: _weight_int8pack_mm(a8 codes) (bf16)      F.linear f32
    cpu.amx   linear.w8/w4 any     32: int8/int4 kernels (bf16)                  F.linear bf16
    cpu.amx   linear.w8a8  any     32: _int_mm                                   F.linear bf16
    other     every op     any     -                                             F.linear (input)

``cpu.avx2`` was measured here (AMD EPYC, 2 cores, AVX2 without VNNI, AMX or AVX512-BF16),
on 768→3072, 3072→768 and 4096→4096 at 1–64 rows, interleaved, minima and medians.  The
machine was shared: with 2 threads every parallel region waited ~8 ms for the busy second
core, so the thresholds come from 1-thread runs (2-thread minima agreed where undisturbed);
re-measure on a quiet machine.  Per row count, the integer kernel
is listed where it beat both float32 and bfloat16 GEMM of the same run (ratios, best float
over kernel, at 1 / 4–8 / 12–16 / 24 / 32 rows: int8 weight-only small ≈1 / 1.4–2.8 / 0.8–1.3
/ <1, large 2.1 / 1.8–3.3 / 1.5–3 / 1.2 / 1.0; int4 small 0.65 / 1.3–2.6 / 0.9–1.3 / <1,
large 1.4 / 2.3–2.4 / 1.5–1.9 / 1.05 / 1.0).  There ``_int_mm`` has no fast path (oneDNN's int8
GEMM needs VNNI; it runs a plain loop 3–30× slower than float32), bfloat16 GEMM is emulated
and slower than float32 from a few rows, so W8A8 runs its int8 codes on the weight-only
kernel, and every other row count runs float32 GEMM on the dequantized weight.

``cpu.amx`` follows the measurements quoted in the issue on a 2-core AMX machine
(weight-only kernels fast only with bfloat16 activations; from about 32 rows bfloat16 GEMM
beats every weight-only path); it is not re-measured here.  Machines with no row (other
CPUs, CUDA) get the float path in the input's dtype until measured: never slower than what
it replaces.  bfloat16 compute rounds activations, weights or outputs to 8 bits of mantissa
(relative 2⁻⁹): small against int8/int4 rounding, and held to 1.5× the layer's own
quantization error by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError, KernelUnavailableError, check_choice
from .probe import probe
from .registry import BACKENDS, KernelImpl, candidates, find
from .weights import QuantWeight

BACKEND_CHOICES = ("auto",) + BACKENDS

_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

#: (machine, op[, size class]) -> ((rows_below, backend, compute[, kernel name]), ...): the
#: segment of the first ``rows_below`` greater than the row count applies (None = no upper
#: bound); a row for the weight's size class (:func:`size_class`) wins over one for all sizes.
#: ``compute`` is a key of ``_DTYPES`` or ``"input"`` (the input's own dtype); the kernel
#: name picks one of several implementations of the backend (default: the first registered).
_A8_CODES = "aten._weight_int8pack_mm(a8 codes)"
TABLE: dict[tuple, tuple[tuple, ...]] = {
    ("cpu.avx2", "linear.w8", "small"): ((16, "native", "bf16"), (None, "dense", "f32")),
    ("cpu.avx2", "linear.w8", "large"): ((32, "native", "bf16"), (None, "dense", "f32")),
    ("cpu.avx2", "linear.w4", "small"): ((2, "dense", "f32"), (16, "native", "bf16"),
                                         (None, "dense", "f32")),
    ("cpu.avx2", "linear.w4", "large"): ((32, "native", "bf16"), (None, "dense", "f32")),
    ("cpu.avx2", "linear.w8a8", "small"): ((16, "native", "bf16", _A8_CODES),
                                           (None, "dense", "f32")),
    ("cpu.avx2", "linear.w8a8", "large"): ((32, "native", "bf16", _A8_CODES),
                                           (None, "dense", "f32")),
    ("cpu.amx", "linear.w8"): ((32, "native", "bf16"), (None, "dense", "bf16")),
    ("cpu.amx", "linear.w4"): ((32, "native", "bf16"), (None, "dense", "bf16")),
    ("cpu.amx", "linear.w8a8"): ((32, "native", "f32", "aten._int_mm"),
                                 (None, "dense", "bf16")),
}

#: A weight of at least this many elements is "large": its float32 copy (16 MiB and more)
#: does not stay in this machine's caches, so a GEMM with few rows is bound by reading the
#: weight — where 1-byte and half-byte weights pay off most.  Table rows may depend on it.
LARGE_WEIGHT = 4 << 20

#: What a machine or op without a table row gets: the float path in the input's dtype.
DEFAULT_SEGMENTS = ((None, "dense", "input", None),)

#: CPU classes, most capable first: (name, names of torch.cpu probes that must all be True).
CPU_CLASSES = (
    ("cpu.amx", ("_is_amx_tile_supported", "_is_avx512_bf16_supported")),
    ("cpu.avx512_vnni", ("_is_vnni_supported", "_is_avx512_supported")),
    ("cpu.avx2", ("_is_avx2_supported",)),
)


def machine(device) -> str:
    """The table's name for ``device``: ``cpu.amx``, ``cpu.avx512_vnni``, ``cpu.avx2``,
    ``cpu`` or the device type (``cuda``)."""
    device = torch.device(device)
    if device.type != "cpu":
        return device.type
    for name, checks in CPU_CLASSES:
        if all(bool(getattr(torch.cpu, c, lambda: False)()) for c in checks):
            return name
    return "cpu"


@dataclass(frozen=True)
class Choice:
    """One row range of a plan: rows in ``[min_rows, max_rows)`` run ``impl`` in ``compute``."""

    min_rows: int
    max_rows: int | None
    impl: KernelImpl
    compute: torch.dtype
    reason: str
    fallback: bool = False

    @property
    def backend(self) -> str:
        """The backend of the chosen implementation."""
        return self.impl.backend

    def describe(self) -> str:
        """``"aten._int_mm[float32] rows 1-31"``-style summary."""
        rows = f"rows>={self.min_rows}" if self.max_rows is None else \
            f"rows {self.min_rows}-{self.max_rows - 1}"
        return f"{self.impl.name}[{str(self.compute).replace('torch.', '')}] {rows}"


@dataclass(frozen=True)
class Plan:
    """The choices for every row count (ascending, covering 0 rows and up)."""

    op: str
    backend: str
    choices: tuple[Choice, ...]

    def select(self, rows: int) -> Choice:
        """The choice for an input of ``rows`` rows."""
        for c in self.choices:
            if c.max_rows is None or rows < c.max_rows:
                return c
        raise AssertionError("a plan's last choice has no upper bound")


def unusable(impl: KernelImpl | None, weight: QuantWeight) -> str | None:
    """None if ``impl`` can run ``weight`` on its device (native kernels are probed once),
    else the reason."""
    if impl is None:
        return "no implementation is registered"
    reason = impl.available(weight.device) or impl.supports(weight)
    if reason is None and impl.backend == "native":
        reason = probe(impl, weight.device)
    return reason


def _dtype(compute: str, x_dtype: torch.dtype, impl: KernelImpl) -> torch.dtype:
    dt = x_dtype if compute == "input" else _DTYPES[compute]
    return dt if dt in impl.compute_dtypes else impl.compute_dtypes[0]


def size_class(weight) -> str:
    """``"large"`` for a weight of at least :data:`LARGE_WEIGHT` elements, else ``"small"``."""
    return "large" if weight.n * weight.k >= LARGE_WEIGHT else "small"


def _segments(where: str, op: str, weight):
    """The table's segments as ``(rows_below, backend, compute, kernel name or None)``: the
    row for the weight's size class, else the row for every size."""
    found = TABLE.get((where, op, size_class(weight)), TABLE.get((where, op), ()))
    return [tuple(seg) + (None,) * (4 - len(seg)) for seg in found]


def _forced(op: str, weight, x_dtype, backend: str, segments) -> Plan:
    listed = [(c, k) for _, b, c, k in segments if b == backend]
    compute, name = listed[0] if listed else ("input", None)
    impls = candidates(op, backend, weight.device)
    impls.sort(key=lambda i: i.name != name)  # the table's kernel first
    reasons = []
    for impl in impls:
        reason = unusable(impl, weight)
        if reason is None:
            return Plan(op, backend, (Choice(0, None, impl, _dtype(compute, x_dtype, impl),
                                             f"backend={backend!r} forced by the caller"),))
        reasons.append(f"{impl.name}: {reason}")
    raise KernelUnavailableError(
        f"backend={backend!r} is unavailable for {op} ({weight.qtype.name}, block "
        f"{weight.block_size}) on {weight.device}: "
        f"{'; '.join(reasons) or 'no implementation is registered'}. Fix: use "
        "backend='auto' (chooses a kernel that runs here and records why), 'dense' or "
        "'reference'")


def plan(op: str, weight: QuantWeight, x_dtype: torch.dtype, backend: str = "auto") -> Plan:
    """Choose the kernel of ``op`` for every row count (see the module docstring).

    Raises :class:`ConfigError` for an unknown backend and :class:`KernelUnavailableError`
    when a forced backend cannot run this weight on its device.
    """
    check_choice("backend", backend, BACKEND_CHOICES,
                 fix="'auto' chooses per row count and records why; force 'native' (integer "
                     "kernels), 'dense' (float GEMM) or 'reference' (the slow twin)")
    where = machine(weight.device)
    segments = _segments(where, op, weight)
    if backend != "auto":
        return _forced(op, weight, x_dtype, backend, segments)
    source = f"{where} table" if segments else f"no table row for {where}/{op}"
    choices, low = [], 0
    for rows_below, name, compute, kernel in segments or DEFAULT_SEGMENTS:
        impl = find(op, name, weight.device, kernel)
        reason = unusable(impl, weight)
        span = f"rows >= {low}" if rows_below is None else f"rows < {rows_below}"
        if reason is None:
            choices.append(Choice(low, rows_below, impl, _dtype(compute, x_dtype, impl),
                                  f"{source}: {impl.name} for {span}"))
        else:  # the table wanted a kernel that cannot run: the float path, said so
            impl = find(op, "dense", weight.device)
            choices.append(Choice(low, rows_below, impl, _dtype("input", x_dtype, impl),
                                  f"{source} wants {kernel or name} for {span}, unavailable "
                                  f"({reason}): fallback to the float path", fallback=True))
        low = rows_below or low
    return Plan(op, "auto", tuple(choices))


def parse_backend(backend) -> str:
    """Validate a backend name (for callers that store it before planning)."""
    if backend not in BACKEND_CHOICES:
        raise ConfigError("backend", backend, f"one of {BACKEND_CHOICES}",
                          fix="'auto', 'native', 'dense' or 'reference'")
    return backend
