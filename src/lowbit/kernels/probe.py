"""Probe a integer kernel once per device before trusting it.

Private aten ops change between PyTorch versions and devices (argument layouts, nibble
order, shape limits).  :func:`probe` runs a kernel on a tiny weight of its op's format and
compares it with the reference; a kernel that raises or disagrees is unavailable on that
device, and the reason says why.  Results are cached per process.
"""

from __future__ import annotations

import logging
import threading

import torch

from ..primitives.affine import choose_qparams, quantize
from ..primitives.packing import pack_codes
from ..types import PerChannel, PerGroup, Scheme, qtype_from_name
from .act import ActQuantizer
from .registry import KernelImpl, find
from .weights import quant_weight

log = logging.getLogger(__name__)

#: Relative error allowed in a probe: bfloat16 inputs and outputs (2⁻⁸) with margin; a
#: wrong layout or nibble order gives errors of order 1.
PROBE_RTOL = 2e-2

_cache: dict[tuple[str, str, str], str | None] = {}
_lock = threading.Lock()


def _probe_problem(spec, device: torch.device):
    """A tiny weight (N=32, K=256) in the probe's format, rows x, bias and act quantizer."""
    qtype_name, group, act = spec
    qtype = qtype_from_name(qtype_name)
    gen = torch.Generator().manual_seed(1234)
    w = torch.randn(32, 256, generator=gen)
    gran = PerChannel(0) if group is None else PerGroup(group, 1)
    qp = choose_qparams(w, qtype, Scheme.SYMMETRIC, gran)
    codes = quantize(w, qp)
    qdata = pack_codes(codes, qtype) if qtype.bits <= 4 else codes
    weight = quant_weight(qdata.to(device), qp.scale.to(device), qp.zero_point.to(device),
                          qtype, qp.block_size)
    x = torch.randn(5, 256, generator=gen).to(device)
    bias = torch.randn(32, generator=gen).to(device)
    return weight, x, bias, (None if act is None else ActQuantizer(act))


def _run_probe(impl: KernelImpl, device: torch.device) -> str | None:
    spec = impl.extra.get("probe")
    if spec is None:
        return None
    try:
        weight, x, bias, act = _probe_problem(spec, device)
        ref = find(impl.op, "reference", device)
        want = ref.run(ref.prepare(weight, torch.float32), x, bias, act)
        got = impl.run(impl.prepare(weight, impl.compute_dtypes[0]), x, bias, act)
        err = float((got.float() - want).norm() / want.norm())
    except Exception as exc:  # noqa: BLE001 - any failure makes the kernel unavailable
        return f"its probe failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if not err <= PROBE_RTOL:
        return f"its probe disagrees with the reference (relative error {err:.3g})"
    return None


def probe(impl: KernelImpl, device) -> str | None:
    """None if ``impl`` passed its probe on ``device`` (run once per process), else why not."""
    device = torch.device(device)
    key = (impl.name, impl.op, str(device))
    with _lock:
        if key not in _cache:
            _cache[key] = _run_probe(impl, device)
            if _cache[key]:
                log.info("kernel %s (%s) unavailable on %s: %s", impl.name, impl.op, device,
                         _cache[key])
        return _cache[key]
