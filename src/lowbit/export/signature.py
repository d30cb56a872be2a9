"""The calling convention of an export: input names, dynamic axes, flattened outputs.

One batch is a tensor (one positional input), a tuple (positional inputs) or a dict (keyword
inputs, such as a tokenizer batch), as everywhere in lowbit (``lowbit.model.batches``).  Inputs
are named after the dict keys or ``forward``'s parameters; outputs ``output`` (one tensor),
``output_<i>`` (a tuple) or the dict keys.  :class:`Flat` gives both exporters one convention:
positional tensors in, a tuple of tensors out.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ExportError
from ..model.batches import split_batch


def input_names(model: nn.Module, n: int) -> list[str]:
    """Names of ``n`` positional inputs: ``forward``'s parameters, else ``input_<i>``."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= n:
        return [p.name for p in params[:n]]
    return [f"input_{i}" for i in range(n)]


def split_inputs(model: nn.Module, example_inputs: Any) -> tuple[bool, list[str], list]:
    """``(by_keyword, names, tensors)`` of one example batch (tuple, dict or tensor)."""
    args, kwargs = split_batch(example_inputs)
    items = [(k, v) for k, v in kwargs.items() if v is not None] if kwargs else \
        list(zip(input_names(model, len(args)), args))
    bad = [name for name, v in items if not isinstance(v, torch.Tensor)]
    if not items or bad:
        raise ConfigError("example_inputs", f"inputs {bad}" if bad else example_inputs,
                          "a tensor, a tuple of tensors or a dict of tensors (None values are "
                          "left out)", fix="pass one batch of the model's real inputs")
    return bool(kwargs), [name for name, _ in items], [v for _, v in items]


def dynamic_axes_for(names: list[str], tensors: list[torch.Tensor], dynamic_batch: bool,
                     dynamic_axes: Any) -> dict[str, dict[int, str]]:
    """Name -> {axis: symbol}: the option as given, or batch (and token sequence) axes."""
    if not isinstance(dynamic_batch, bool):
        raise ConfigError("dynamic_batch", dynamic_batch, "True or False")
    if dynamic_axes is None:
        if not dynamic_batch:
            return {}
        axes = {}
        for name, t in zip(names, tensors):
            if t.dim() >= 1:
                axes[name] = {0: "batch"}
                if not t.is_floating_point() and t.dim() == 2:  # token ids, attention masks
                    axes[name][1] = "sequence"
        return axes
    if not isinstance(dynamic_axes, Mapping):
        raise ConfigError("dynamic_axes", dynamic_axes,
                          "a dict input name -> {axis: name} or [axes]",
                          fix="e.g. {'input_ids': {0: 'batch', 1: 'sequence'}}")
    ranks = dict(zip(names, (t.dim() for t in tensors)))
    out: dict[str, dict[int, str]] = {}
    for name, spec in dynamic_axes.items():
        if name not in ranks:
            raise ConfigError("dynamic_axes", name, f"an input name: {names}",
                              fix="use the names of example_inputs (dict keys or forward's "
                                  "argument names)")
        spec = dict(spec) if isinstance(spec, Mapping) else \
            {a: f"{name}_dim{a}" for a in spec} if isinstance(spec, Sequence) else None
        if spec is None or not all(isinstance(a, int) and not isinstance(a, bool)
                                   and 0 <= a < ranks[name] and isinstance(s, str)
                                   for a, s in spec.items()):
            raise ConfigError(f"dynamic_axes[{name!r}]", dynamic_axes[name],
                              f"{{axis: name}} with axes in [0, {ranks[name] - 1}]",
                              fix="e.g. {0: 'batch', 1: 'sequence'}")
        out[name] = spec
    return out


def check_dynamic_sizes(names, tensors, axes) -> None:
    """Raise :class:`ConfigError` for a dynamic axis of size 1 (the exporter would fix it)."""
    for name, t in zip(names, tensors):
        for axis, symbol in axes.get(name, {}).items():
            if t.shape[axis] < 2:
                raise ConfigError(f"example_inputs[{name!r}].shape[{axis}]", t.shape[axis],
                                  f"at least 2 for the dynamic axis {symbol!r}",
                                  fix="PyTorch's exporter fixes size-1 dimensions; pass an "
                                      "example with 2 or more there, or dynamic_batch=False")


def flatten_outputs(out: Any) -> tuple[list[str], list[torch.Tensor]]:
    """``(names, tensors)`` of a model output: a tensor, a tuple/list or a dict of tensors."""
    if isinstance(out, torch.Tensor):
        return ["output"], [out]
    if isinstance(out, Mapping):
        pairs = [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    elif isinstance(out, (tuple, list)):
        pairs = [(f"output_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    else:
        pairs = []
    if not pairs:
        raise ExportError(f"the model returned {type(out).__name__} without tensors; ONNX "
                          "export needs tensor outputs (a tensor, tuple or dict of tensors)")
    return [k for k, _ in pairs], [v for _, v in pairs]


class Flat(nn.Module):
    """Positional tensors in, a tuple of tensors out: one calling convention for both exporters."""

    def __init__(self, model: nn.Module, names: list[str], by_keyword: bool):
        super().__init__()
        self.model, self.names, self.by_keyword = model, names, by_keyword

    def forward(self, *inputs):
        out = self.model(**dict(zip(self.names, inputs))) if self.by_keyword \
            else self.model(*inputs)
        return tuple(flatten_outputs(out)[1])
