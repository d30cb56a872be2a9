"""The kernel registry: ``(op, path, device) -> KernelImpl``.

An *op* names what is computed and the format of its operands (:data:`OP_CLASSES`):

``linear.w4``     weight-only, weights of at most 4 bits (int4 group-wise kernels)
``linear.w8``     weight-only, weights of at most 8 bits (int8 per-channel kernels)
``linear.w16``    weight-only, wider grids (no integer kernel; dense or reference)
``linear.w8a8``   weights of at most 8 bits × dynamic int8 activations (int8 GEMM)
``linear.w16a8``  wider weights × dynamic int8 activations (dense or reference)

A *path* is how: ``reference`` (dequantize on every call, plain float op: the slow twin,
always present), ``integer`` (PyTorch's integer kernels) and ``dense`` (dequantize once, keep
the float weight, run PyTorch's float GEMM in float32 or bfloat16).  Implementations register
themselves (:func:`register`); adding a kernel adds an entry, it does not edit a dispatcher.
An op may have several integer kernels on one device (W8A8: ``_int_mm``, int8 codes on the
weight-only kernel, and the fbgemm and oneDNN quantized engines of :mod:`.int8_engines`);
``auto`` times them on the machine at hand (:mod:`.dispatch`), a forced path runs the first
that can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..config import KERNEL_PATHS
from .weights import QuantWeight

#: The paths an implementation can belong to (what ``auto`` chooses among).
PATHS = tuple(p for p in KERNEL_PATHS if p != "auto")

#: (op, widest weight grid in bits, takes dynamic int8 activations); first match wins.
OP_CLASSES: tuple[tuple[str, int, bool], ...] = (
    ("linear.w4", 4, False),
    ("linear.w8", 8, False),
    ("linear.w16", 16, False),
    ("linear.w8a8", 8, True),
    ("linear.w16a8", 16, True),
)


def linear_op(weight: QuantWeight, act) -> str:
    """The op of a linear layer with ``weight`` and input format ``act`` (None: float)."""
    for op, max_bits, quantized_act in OP_CLASSES:
        if weight.qtype.bits <= max_bits and quantized_act == (act is not None):
            return op
    raise AssertionError(f"no op class for {weight.qtype} act={act}")  # 16 bits is the max


def traceable(impl: "KernelImpl") -> bool:
    """Whether ``torch.compile`` can trace ``impl.run`` into a graph."""
    return bool(impl.extra.get("traceable", True))


def _always(*_args) -> str | None:
    return None


@dataclass(frozen=True)
class KernelImpl:
    """One implementation of an op.

    name: what runs (e.g. ``aten._int_mm``), recorded in the layer's record.
    op, path, device: its registry key (device ``"any"`` serves every device).
    prepare(weight, compute_dtype) -> state: done once per layer (packing, dequantizing).
    run(state, x, bias, act) -> y: ``x`` rows ``[M, K]`` in the caller's dtype, ``y``
    ``[M, N]`` in the same dtype; ``act`` is an :class:`~lowbit.kernels.act` quantizer or None.
    supports(weight, act) -> None, or the reason this weight (:class:`QuantWeight`) with this
    input format (:class:`~lowbit.kernels.formats.ActFormat` or None) cannot run here: the
    one place formats are checked.
    available(device) -> None, or the reason the kernel cannot run on ``device``.
    compute_dtypes: the dtypes it computes in, preferred first.
    extra: ``probe`` (how :mod:`.probe` checks it), ``traceable`` (False when
    ``torch.compile`` cannot trace ``run``: :func:`lowbit.compile` then chooses among the
    others; default True).
    """

    name: str
    op: str
    path: str
    device: str
    prepare: Callable[[QuantWeight, torch.dtype], Any]
    run: Callable[..., torch.Tensor]
    compute_dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    supports: Callable[..., str | None] = _always
    available: Callable[[torch.device], str | None] = _always
    doc: str = ""
    extra: dict = field(default_factory=dict)


_REGISTRY: dict[tuple[str, str, str, str], KernelImpl] = {}


def register(impl: KernelImpl) -> KernelImpl:
    """Add ``impl`` under ``(op, path, device, name)``, replacing one of the same key.

    Several implementations may share ``(op, path, device)``: the first registered is
    the default, the dispatch table may name another.
    """
    assert impl.path in PATHS, impl.path
    _REGISTRY[(impl.op, impl.path, impl.device, impl.name)] = impl
    return impl


def registered() -> dict[tuple[str, str, str, str], KernelImpl]:
    """A copy of the whole registry, keyed by ``(op, path, device, name)``."""
    return dict(_REGISTRY)


def candidates(op: str, path: str, device) -> list[KernelImpl]:
    """Implementations of ``op`` on ``path`` for ``device``'s type (its own first, then
    those registered for any device), in registration order."""
    kind = torch.device(device).type
    return ([i for (o, b, d, _), i in _REGISTRY.items() if (o, b, d) == (op, path, kind)]
            + [i for (o, b, d, _), i in _REGISTRY.items() if (o, b, d) == (op, path, "any")])


def find(op: str, path: str, device, name: str | None = None) -> KernelImpl | None:
    """The implementation of ``op`` on ``path`` for ``device`` (the one called ``name``,
    or the default), or None."""
    found = [i for i in candidates(op, path, device) if name is None or i.name == name]
    return found[0] if found else None
