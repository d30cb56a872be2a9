"""The one place that chooses a kernel: op, input dtype, device and number of rows.

:func:`plan` turns ``(op, weight, input dtype, path)`` into a :class:`Plan`: row ranges,
each with a kernel, the dtype it computes in and the reason, which a
:class:`~lowbit.kernels.linear.PreparedLinear` follows on every call (``M`` = rows of the
input).  ``path="auto"`` reads :data:`TABLE` for the machine's CPU class (:func:`machine`)
and falls back to the float path where the table has no row or its kernel cannot run here,
saying so in the reason; a forced path (``"integer"``, ``"dense"``, ``"reference"``) is used
for every row count or raises :class:`KernelUnavailableError`.  The table's rows and the
measurements behind them are in ``docs/kernels.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import check_kernel_path
from ..errors import KernelUnavailableError
from .formats import ActFormat
from .probe import probe
from .registry import KernelImpl, candidates, find
from .weights import QuantWeight

_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}

#: (machine, op[, size class]) -> ((rows_below, path, compute[, kernel name]), ...): the
#: segment of the first ``rows_below`` greater than the row count applies (None = no upper
#: bound); a row for the weight's size class (:func:`size_class`) wins over one for all sizes.
#: ``compute`` is a key of ``_DTYPES`` or ``"input"`` (the input's own dtype); the kernel
#: name picks one of several implementations of the path (default: the first registered).
_A8_CODES = "aten._weight_int8pack_mm(a8 codes)"
TABLE: dict[tuple, tuple[tuple, ...]] = {
    ("cpu.avx2", "linear.w8", "small"): ((16, "integer", "bf16"), (None, "dense", "f32")),
    ("cpu.avx2", "linear.w8", "large"): ((32, "integer", "bf16"), (None, "dense", "f32")),
    ("cpu.avx2", "linear.w4", "small"): ((2, "dense", "f32"), (16, "integer", "bf16"),
                                         (None, "dense", "f32")),
    ("cpu.avx2", "linear.w4", "large"): ((32, "integer", "bf16"), (None, "dense", "f32")),
    ("cpu.avx2", "linear.w8a8", "small"): ((16, "integer", "bf16", _A8_CODES),
                                           (None, "dense", "f32")),
    ("cpu.avx2", "linear.w8a8", "large"): ((32, "integer", "bf16", _A8_CODES),
                                           (None, "dense", "f32")),
    ("cpu.amx", "linear.w8"): ((32, "integer", "bf16"), (None, "dense", "bf16")),
    ("cpu.amx", "linear.w4"): ((32, "integer", "bf16"), (None, "dense", "bf16")),
    ("cpu.amx", "linear.w8a8"): ((32, "integer", "f32", "aten._int_mm"),
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
    def path(self) -> str:
        """The path of the chosen implementation."""
        return self.impl.path

    def describe(self) -> str:
        """``"aten._int_mm[float32] rows 1-31"``-style summary."""
        rows = f"rows>={self.min_rows}" if self.max_rows is None else \
            f"rows {self.min_rows}-{self.max_rows - 1}"
        return f"{self.impl.name}[{str(self.compute).replace('torch.', '')}] {rows}"


@dataclass(frozen=True)
class Plan:
    """The choices for every row count (ascending, covering 0 rows and up)."""

    op: str
    path: str
    choices: tuple[Choice, ...]

    def select(self, rows: int) -> Choice:
        """The choice for an input of ``rows`` rows."""
        for c in self.choices:
            if c.max_rows is None or rows < c.max_rows:
                return c
        raise AssertionError("a plan's last choice has no upper bound")


def unusable(impl: KernelImpl | None, weight: QuantWeight, act=None) -> str | None:
    """None if ``impl`` can run ``weight`` with input format ``act`` on its device (integer
    kernels are probed once), else the reason."""
    if impl is None:
        return "no implementation is registered"
    reason = impl.available(weight.device) or impl.supports(weight, act)
    if reason is None and impl.path == "integer":
        reason = probe(impl, weight.device)
    return reason


def _dtype(compute: str, x_dtype: torch.dtype, impl: KernelImpl) -> torch.dtype:
    dt = x_dtype if compute == "input" else _DTYPES[compute]
    return dt if dt in impl.compute_dtypes else impl.compute_dtypes[0]


def size_class(weight) -> str:
    """``"large"`` for a weight of at least :data:`LARGE_WEIGHT` elements, else ``"small"``."""
    return "large" if weight.n * weight.k >= LARGE_WEIGHT else "small"


def _segments(where: str, op: str, weight):
    """The table's segments as ``(rows_below, path, compute, kernel name or None)``: the
    row for the weight's size class, else the row for every size."""
    found = TABLE.get((where, op, size_class(weight)), TABLE.get((where, op), ()))
    return [tuple(seg) + (None,) * (4 - len(seg)) for seg in found]


def _forced(op: str, weight, x_dtype, path: str, segments, act) -> Plan:
    listed = [(c, k) for _, b, c, k in segments if b == path]
    compute, name = listed[0] if listed else ("input", None)
    impls = candidates(op, path, weight.device)
    impls.sort(key=lambda i: i.name != name)  # the table's kernel first
    reasons = []
    for impl in impls:
        reason = unusable(impl, weight, act)
        if reason is None:
            return Plan(op, path, (Choice(0, None, impl, _dtype(compute, x_dtype, impl),
                                             f"path={path!r} forced by the caller"),))
        reasons.append(f"{impl.name}: {reason}")
    raise KernelUnavailableError(
        f"path={path!r} is unavailable for {op} ({weight.qtype.name}, block "
        f"{weight.block_size}) on {weight.device}: "
        f"{'; '.join(reasons) or 'no implementation is registered'}. Fix: use "
        "path='auto' (chooses a kernel that runs here and records why), 'dense' or "
        "'reference'")


def plan(op: str, weight: QuantWeight, x_dtype: torch.dtype, path: str = "auto",
         act=None) -> Plan:
    """Choose the kernel of ``op`` for every row count (see the module docstring).

    act: the input's :class:`~lowbit.kernels.formats.ActFormat` (or an act mode string; None
    for a float input), which the candidates' ``supports`` read.  Raises :class:`ConfigError` for an unknown path and :class:`KernelUnavailableError`
    when a forced path cannot run this weight on its device.
    """
    check_kernel_path(path)
    act = ActFormat.from_mode(act)
    where = machine(weight.device)
    segments = _segments(where, op, weight)
    if path != "auto":
        return _forced(op, weight, x_dtype, path, segments, act)
    source = f"{where} table" if segments else f"no table row for {where}/{op}"
    choices, low = [], 0
    for rows_below, name, compute, kernel in segments or DEFAULT_SEGMENTS:
        impl = find(op, name, weight.device, kernel)
        reason = unusable(impl, weight, act)
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
