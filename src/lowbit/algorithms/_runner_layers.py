"""Plumbing for the whole-model repair algorithms (bias correction, BN re-estimation, the
affine patch): switch fake quantization off, list the lowbit layers in the order the forward
calls them, and stream one layer's inputs or outputs over the calibration batches.

Everything streams batch by batch: a layer's activations are never all held at once.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..model.batches import call_batch
from ..model.prepare import quant_modules
from ..nn.quantizer import TensorQuantizer


@contextlib.contextmanager
def fake_quant_off(model: nn.Module) -> Iterator[nn.Module]:
    """Every TensorQuantizer of ``model`` passes its input through (the float model) inside
    the block; their ``enabled`` flags are restored on exit."""
    quantizers = [m for m in model.modules() if isinstance(m, TensorQuantizer)]
    saved = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield model
    finally:
        for q, enabled in zip(quantizers, saved):
            q.enabled = enabled


def layers_in_call_order(model: nn.Module, batch: Any) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the lowbit layers with a weight quantizer, in the order one
    forward on ``batch`` calls them (each once)."""
    layers = [(n, m) for n, m in quant_modules(model)
              if getattr(m, "weight_quantizer", None) is not None]
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: order.append(n))
               for n, m in layers]
    try:
        with torch.no_grad():
            call_batch(model, batch)
    finally:
        for h in handles:
            h.remove()
    by_name = dict(layers)
    seen: list[str] = []
    for n in order:
        if n not in seen:
            seen.append(n)
    return [(n, by_name[n]) for n in seen]


def channel_axis(layer: nn.Module) -> int:
    """The axis of a layer's output that indexes its output channels."""
    return -1 if isinstance(layer, nn.Linear) else 1


def channels_last_2d(y: torch.Tensor, axis: int) -> torch.Tensor:
    """``y`` as ``[rows, C]`` with the channel ``axis`` last (float32)."""
    return y.detach().float().movedim(axis, -1).reshape(-1, y.shape[axis])


def stream(model: nn.Module, module: nn.Module, calib_data: Any,
           fn: Callable[[torch.Tensor, torch.Tensor], None], *, stop: bool = True) -> None:
    """Run ``model`` over ``calib_data``; on each call of ``module`` call ``fn(input, output)``
    (input: the first positional argument as given to the module).  ``stop``: skip the rest
    of each forward once ``module`` has run."""

    class _Done(Exception):
        pass

    def hook(_m, args, out):
        fn(args[0].detach(), out.detach())
        if stop:
            raise _Done

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in calib_data:
                try:
                    call_batch(model, batch)
                except _Done:
                    pass
    finally:
        handle.remove()


def paired_stream(reference: nn.Module, ref_module: nn.Module, model: nn.Module,
                  module: nn.Module, calib_data: Any,
                  fn: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """For every batch, ``fn(reference_output, model_output)`` of the two modules (the same
    layer in a float reference copy and in the quantized model)."""
    for batch in calib_data:
        got: list[torch.Tensor] = []
        stream(reference, ref_module, [batch], lambda _x, y: got.append(y))
        stream(model, module, [batch], lambda _x, y: fn(got[0], y))
