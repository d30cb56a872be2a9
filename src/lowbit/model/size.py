"""Model size: float bytes, real quantized bytes, compression ratio."""

from __future__ import annotations

import math

from torch import nn

from ..nn.quantized import QuantizedModule


def _own_bytes(module: nn.Module) -> int:
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return sum(t.numel() * t.element_size() for t in tensors)


def _float_bytes(module: QuantizedModule) -> int:
    itemsize = module.weight_dtype.itemsize
    bias = 0 if module.bias is None else module.bias.numel() * itemsize
    return math.prod(module.weight_shape) * itemsize + bias


def estimate_model_size(model: nn.Module) -> dict:
    """Bytes of ``model`` as float and as stored now.

    Returns ``{"float_bytes", "quantized_bytes", "compression_ratio"}``. A real low-bit
    module counts its stored bytes (codes, scales, zero points, bias, input qparams)
    against the bytes its float weight and bias take in the weight's original dtype;
    every other parameter and buffer counts the same on both sides. A fake-quant model
    still stores float weights, so its ratio stays about 1 until ``convert``.
    """
    float_bytes = quantized_bytes = 0
    stack = [model]
    while stack:
        module = stack.pop()
        if isinstance(module, QuantizedModule):
            float_bytes += _float_bytes(module)
            quantized_bytes += module.nbytes()
            continue  # its children (the input quantizer) are inside nbytes()
        own = _own_bytes(module)
        float_bytes += own
        quantized_bytes += own
        stack.extend(module.children())
    ratio = float_bytes / quantized_bytes if quantized_bytes else float("nan")
    return {"float_bytes": int(float_bytes), "quantized_bytes": int(quantized_bytes),
            "compression_ratio": ratio}
