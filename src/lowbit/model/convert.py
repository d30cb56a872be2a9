"""convert: calibrated fake-quant modules → real low-bit modules with integer storage.

Each lowbit fake-quant module is replaced by its entry in
``lowbit.nn.tables.QUANTIZED_MODULES`` (int8/int16 codes or packed int4 ``qdata``
with ``scale`` and ``zero_point``).  Layers are converted one at a time and the
fake-quant module is dropped as soon as its replacement exists, so converting
in place needs memory for the model plus one layer.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from ..errors import ConfigError
from ..nn.quantized import QuantizedModule

from ..nn.tables import QUANTIZED_MODULES
from .prepare import STATE_ATTR, alias_map, lowbit_state, quant_modules, swap_module
from .ties import share_converted, tied_groups

logger = logging.getLogger(__name__)


def convert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every calibrated fake-quant module of ``model`` by a real low-bit module.

    inplace: convert ``model`` itself (memory: the model plus one layer) instead of a copy,
    which keeps the fake-quant model for comparison.
    Raises :class:`~lowbit.errors.StateError` if a layer still needs calibration.
    """
    state = lowbit_state(model)
    if not inplace:
        model = copy.deepcopy(model)
        state = lowbit_state(model)
    aliases = alias_map(model)
    tied = tied_groups(model)  # by Parameter identity, before the float weights go
    for name, qat in list(quant_modules(model)):
        if qat.weight_quantizer is None:  # activation-only layer: stays fake-quant
            record = state.record(name)
            if record is not None:
                record.reason += "; weight kept float, so the layer stays fake-quant after convert"
            continue
        real = QUANTIZED_MODULES[type(qat)].from_qat(qat)
        swap_module(model, name, real, aliases)  # every name a shared layer has
        record = state.record(name)
        if record is not None:
            record.metrics["weight_bytes"] = real.nbytes()
            for attr in ("kernel_path", "kernel", "kernel_reason"):
                value = getattr(real, attr, None)
                if isinstance(value, str):
                    setattr(record, attr, value)
        del qat
    share_converted(model, tied)  # one qdata/scale/zero_point per tied weight
    state.converted = True
    logger.info("converted %s to integer storage", type(model).__name__)
    return model


#: Row counts :func:`tune_kernels` decides by default: one per bucket size class that
#: single requests, small batches and whole sequences use.
TUNE_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def tune_kernels(model: nn.Module, rows=TUNE_ROWS) -> nn.Module:
    """Decide every ``auto`` layer's kernel for inputs of ``rows`` rows now (measured on this
    machine, or read from the tuning cache) instead of on first use, and write the decisions
    into the layers' records.  Returns ``model``."""
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module converted by "
                          "lowbit.convert", fix="tune_kernels(lowbit.convert(qmodel))")
    if isinstance(rows, (str, bytes)) or not hasattr(rows, "__iter__") or not all(
            isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rows) \
            or not list(rows):
        raise ConfigError("rows", rows, "a non-empty sequence of integers >= 1",
                          fix=f"e.g. rows=(1, 8, 128); the default is {TUNE_ROWS}")
    state = getattr(model, STATE_ATTR, None)
    for name, module in model.named_modules():
        if not isinstance(module, QuantizedModule) or not hasattr(module, "kernel_plan"):
            continue
        if module.requested_kernel_path == "auto" and module.kernel_unsupported() is None:
            module.kernel_plan().decide(rows)
        record = None if state is None else state.record(name)
        if record is not None:
            record.kernel_path, record.kernel, record.kernel_reason = module._kernel_info()
    return model
