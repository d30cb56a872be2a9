"""Model size: float bytes, real quantized bytes, compression ratio."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.quantized import QuantizedModule
from ..nn.quantizer import TensorQuantizer


def _tensor_key(t: torch.Tensor) -> tuple:
    """One key per distinct piece of memory: tied Parameters (one object under two names) and
    tensors sharing storage at the same offset and shape count once."""
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
        ptr = 0
    if not ptr:  # meta or empty tensors: fall back to the object itself
        return ("id", id(t))
    return ("mem", ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _own_bytes(module: nn.Module, seen: set) -> int:
    total = 0
    for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        key = _tensor_key(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _float_bytes(module: QuantizedModule) -> int:
    itemsize = module.weight_dtype.itemsize
    bias = 0 if module.bias is None else module.bias.numel() * itemsize
    return math.prod(module.weight_shape) * itemsize + bias


def estimate_model_size(model: nn.Module) -> dict:
    """Bytes of ``model`` as float and as stored now.

    Returns ``{"float_bytes", "quantized_bytes", "compression_ratio"}`` (the ratio is 1.0 for
    a model without parameters). A real low-bit
    module counts its stored bytes (codes, scales, zero points, bias, input qparams)
    against the bytes its float weight and bias take in the weight's original dtype.
    A fake-quant model's quantizers (qparams held beside the float weights) count as
    stored bytes only, so ``float_bytes`` is the float model's at every stage and a
    fake-quant model's ratio is a little below 1 until ``convert``. Every other parameter
    and buffer counts the same on both sides. A module or tensor reachable under several
    names (shared layers, tied weights) counts once.  Anything but a module is a
    :class:`ConfigError`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module",
                          fix="pass the float, fake-quant or converted model")
    float_bytes = quantized_bytes = 0
    seen_modules: set[int] = set()
    seen_tensors: set = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        if isinstance(module, QuantizedModule):
            float_bytes += _float_bytes(module)
            quantized_bytes += module.nbytes()
            continue  # its children (the input quantizer) are inside nbytes()
        own = _own_bytes(module, seen_tensors)
        if not isinstance(module, TensorQuantizer):
            float_bytes += own
        quantized_bytes += own
        stack.extend(module.children())
    # a model with no parameters at all stores nothing either way: ratio 1, never NaN
    ratio = float_bytes / quantized_bytes if quantized_bytes else 1.0
    return {"float_bytes": int(float_bytes), "quantized_bytes": int(quantized_bytes),
            "compression_ratio": ratio}
