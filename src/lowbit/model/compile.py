"""``lowbit.compile``: a converted model compiled end to end with ``torch.compile``.

The fastest CPU peers compile the whole model, so that activation quantization, the integer
GEMM's rescale, bias, and the float ops around the matmuls (layer norms, GELU, attention)
fuse into few kernels.  lowbit's converted layers choose a kernel per row count on first use
(measured and cached, :mod:`lowbit.kernels.dispatch`); that planning is Python, which a
compiler cannot trace.  So :func:`compile` first *freezes* every ``QuantizedLinear``: every
row bucket is decided now (read from the tuning cache, or measured once), every chosen
kernel is packed, and the layer's compiled forward becomes plain tensor code — per-token
quantization, the chosen GEMM, rescale and bias — selected by integer row comparisons that
``torch.compile`` specialises on.

Numerics are those of the eager kernels up to float reassociation: the compiled region runs
the same operations (integer GEMMs still accumulate exactly).  One check is left out: eager
kernels refuse an activation holding NaN/Inf (a host synchronisation per layer); compiled
ones propagate it into the output.

Cost: the first call compiles (tens of seconds for a transformer on 2 cores); it is timed
and logged, and kept in ``compiled.first_call_s``.  Inductor caches its compiled code on disk
(its own FX-graph cache, under ``TORCHINDUCTOR_CACHE_DIR``, by default in the temp dir), so
a second process compiles faster.  Changing the model's weights after compiling needs a new
:func:`compile`.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..nn.quantized import QuantizedLinear

log = logging.getLogger(__name__)

#: Inductor options lowbit compiles with: fuse the int8 GEMM's output with the rescale that
#: follows it (the W8A8 epilogue); everything else is torch's default.
INDUCTOR_OPTIONS = {"force_fuse_int_mm_with_mul": True}

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class CompiledModel(nn.Module):
    """A converted model and its ``torch.compile``-d forward (made by :func:`compile`).

    ``module``: the model itself (save and inspect that one); ``first_call_s``: seconds the
    first call took, compilation included (None before it); ``frozen``: per frozen layer,
    its kernel for each row range.
    """

    def __init__(self, module: nn.Module, compiled, frozen: dict[str, str]):
        super().__init__()
        self.module = module
        self._compiled = compiled
        self.frozen = frozen
        self.first_call_s: float | None = None

    def forward(self, *args, **kwargs):
        if self.first_call_s is not None:
            return self._compiled(*args, **kwargs)
        start = time.perf_counter()
        out = self._compiled(*args, **kwargs)
        self.first_call_s = time.perf_counter() - start
        log.info("lowbit.compile: first call (compilation included) took %.1f s",
                 self.first_call_s)
        return out


def freeze_kernels(model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, str]:
    """Freeze every ``QuantizedLinear`` of ``model`` that runs a kernel path for inputs of
    ``dtype``: all row counts decided, kernels packed.  Returns ``{layer name: kernels per row
    range}``."""
    frozen = {}
    for name, m in model.named_modules():
        if (isinstance(m, QuantizedLinear) and m.requested_kernel_path != "reference"
                and m.kernel_unsupported() is None):
            frozen[name] = m.freeze_kernels(dtype).describe()
    return frozen


def compile(model: nn.Module, *, dtype: torch.dtype | None = None, dynamic: bool | None = None,
            mode: str | None = None, options: dict | None = None,
            fullgraph: bool = False) -> CompiledModel:
    """Compile a converted model end to end with ``torch.compile`` (see the module docstring).

    model: a converted model (``lowbit.convert`` or ``quantize_model``), in eval mode.
    dtype: the dtype of the activations the quantized linear layers will see; None reads
    it from the model (float32, or bfloat16 after ``model.to(torch.bfloat16)``: lowbit's
    layers then compute in bfloat16 and keep their qparams in float32).
    dynamic, mode, fullgraph: passed to ``torch.compile`` (``fullgraph=True`` raises on a
    graph break); options: inductor options added to (and overriding)
    :data:`INDUCTOR_OPTIONS`.

    Returns a :class:`CompiledModel`; call it like the model.  The model itself is not
    copied: ``compiled.module`` is ``model``.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module; got {type(model).__name__}. Fix: "
                         "pass the converted model returned by lowbit.quantize_model or "
                         "lowbit.convert")
    if dtype is None:
        dtype = next((m.weight_dtype for m in model.modules()
                      if isinstance(m, QuantizedLinear)), torch.float32)
    if dtype not in _DTYPES:
        raise ConfigError("dtype", dtype, ", ".join(str(d) for d in _DTYPES),
                          fix="the dtype of the activations the model runs in")
    if options is not None and not isinstance(options, dict):
        raise ConfigError("options", options, "a dict of inductor options or None",
                          fix="e.g. options={'freezing': True}")
    if mode is not None and options:
        raise ConfigError("options", options, "None when mode is given",
                          fix="torch.compile takes either mode= or options=, not both")
    if model.training:
        raise InputError("model is in training mode; lowbit.compile compiles inference. Fix: "
                         "call model.eval() first")
    frozen = freeze_kernels(model, dtype)
    opts = {**INDUCTOR_OPTIONS, **(options or {})}
    compiled = torch.compile(model, dynamic=dynamic, mode=mode, fullgraph=fullgraph,
                             options=None if mode is not None else opts)
    return CompiledModel(model, compiled, frozen)
