"""How lowbit feeds a batch to a model, in one place.

A tuple or list batch is passed as positional arguments, a dict as keyword
arguments, anything else as the single argument.  ``calib_data`` may also be a
callable ``forward_loop(model)`` that runs the model itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, InputError, LowbitError


def split_batch(batch: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for one batch, following the convention above."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


def describe_batch(batch: Any) -> str:
    """Shapes, dtypes and devices of a batch's tensors, for error messages."""
    args, kwargs = split_batch(batch)

    def one(t: Any) -> str:
        if isinstance(t, torch.Tensor):
            return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')} on {t.device}"
        return type(t).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts) or "empty"


def check_batch(batch: Any, index: int, what: str = "calibration batch") -> None:
    """InputError for a batch holding tensors on the ``meta`` device (no data to observe)."""
    args, kwargs = split_batch(batch)
    for t in list(args) + list(kwargs.values()):
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            raise InputError(f"{what} {index} ({describe_batch(batch)}) is on the "
                             "'meta' device, which holds no values to observe. Fix: pass real "
                             "input tensors")


def check_module(model: Any, field: str = "model") -> None:
    """ConfigError unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise ConfigError(field, type(model).__name__, "a torch.nn.Module",
                          fix=f"pass the PyTorch model itself as {field} (not its path, "
                              "state_dict or outputs)")


def check_model_materialized(model: nn.Module, what: str = "model") -> None:
    """InputError when ``model`` has parameters or buffers on the ``meta`` device."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.device.type == "meta":
            raise InputError(f"{what} tensor {name!r} {tuple(t.shape)} is on the 'meta' device "
                             "(no values): lowbit needs the trained weights. Fix: load the "
                             "weights first (e.g. model.to_empty(device='cpu') then "
                             "load_state_dict)")


def call_batch(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one batch."""
    args, kwargs = split_batch(batch)
    return model(*args, **kwargs)


def call_checked(model: nn.Module, batch: Any, index: int,
                 what: str = "calibration batch") -> Any:
    """:func:`call_batch`, with a batch the model cannot take (wrong type, shape, dtype or
    a meta tensor) reported as an :class:`InputError` naming batch ``index``."""
    check_batch(batch, index, what)
    try:
        return call_batch(model, batch)
    except (RuntimeError, TypeError, IndexError, ValueError) as exc:
        if isinstance(exc, LowbitError):
            raise
        raise InputError(f"{what} {index} ({describe_batch(batch)}) fails in "
                         f"the model: {type(exc).__name__}: "
                         f"{(str(exc).strip().splitlines() or [''])[0][:300]}. Fix: pass "
                         "batches the float model accepts (check shapes, dtypes and the "
                         "batch convention: tuple -> positional, dict -> keyword)") from exc


def is_forward_loop(calib_data: Any) -> bool:
    """True when ``calib_data`` is a callable ``forward_loop(model)`` (not a module)."""
    return callable(calib_data) and not isinstance(calib_data, nn.Module)


def check_max_batches(value: Any, field: str = "max_batches") -> None:
    """ConfigError unless ``value`` is None or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(field, value, "None or an integer >= 1",
                          fix=f"pass {field}=None to use every batch, or a positive count")


def check_calib_data(calib_data: Any) -> None:
    """ConfigError unless ``calib_data`` is a forward loop or an iterable of batches."""
    if is_forward_loop(calib_data):
        return
    if not isinstance(calib_data, Iterable):
        raise ConfigError("calib_data", type(calib_data).__name__,
                          "an iterable of batches or a callable forward_loop(model)",
                          fix="pass e.g. a list of input tensors, a DataLoader, or a function")
    _check_not_one_batch(calib_data)


def _check_not_one_batch(calib_data: Any) -> None:
    """A lone tensor or dict is one batch, not a list of batches: iterating it would feed
    rows or keys to the model, so it is refused."""
    if isinstance(calib_data, (torch.Tensor, Mapping)):
        kind = "tensor" if isinstance(calib_data, torch.Tensor) else "dict"
        raise ConfigError("calib_data", f"a single {kind}",
                          "an iterable of batches or a callable forward_loop(model)",
                          fix=f"wrap the batch in a list: [batch] (a {kind} is one batch)")


def peek(calib_data: Any) -> tuple[Any | None, Any]:
    """``(first batch or None, data)``: the data to iterate afterwards still holds the
    first batch. A callable forward loop or a non-iterable is returned unchanged; a lone
    tensor or dict (one batch, not a list of batches) raises :class:`ConfigError`."""
    if is_forward_loop(calib_data) or not isinstance(calib_data, Iterable):
        return None, calib_data
    _check_not_one_batch(calib_data)
    if isinstance(calib_data, (list, tuple)):
        return (calib_data[0] if len(calib_data) else None), calib_data
    iterator = iter(calib_data)
    try:
        first = next(iterator)
    except StopIteration:
        return None, ()
    return first, itertools.chain([first], iterator)


def run_batches(model: nn.Module, calib_data: Any, max_batches: int | None = None,
                progress: Callable[[int], None] | None = None) -> int:
    """Run ``model`` over ``calib_data`` (an iterable of batches or ``forward_loop(model)``).

    Returns the number of batches run (-1 when a forward loop ran, which counts its own).
    ``progress`` is called with the running count after every batch.
    """
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 0):
        raise ConfigError("max_batches", max_batches, "None or an integer >= 0",
                          fix="pass max_batches=None to use every batch")
    check_calib_data(calib_data)
    if is_forward_loop(calib_data):
        calib_data(model)
        return -1
    count = 0
    for batch in calib_data:
        if max_batches is not None and count >= max_batches:
            break
        call_checked(model, batch, count)
        count += 1
        if progress is not None:
            progress(count)
    return count
