"""The one call for the common case: prepare, calibrate and convert a model."""

from __future__ import annotations

import logging
from typing import Any, Callable

from torch import nn

from ..config import resolve_fq_impl
from ..errors import ConfigError
from ..records import LayerRecord
from .batches import (check_calib_data, check_max_batches, check_model_materialized,
                      is_forward_loop, peek, run_batches)
from .convert import convert as convert_model
from .prepare import calibrate, lowbit_state, prepare

logger = logging.getLogger(__name__)


def quantize_model(model: nn.Module, recipe: Any, calib_data: Any, *,
                   max_batches: int | None = None, fq_impl: str = "reference",
                   convert: bool = True, example_inputs: Any = None,
                   progress: Callable[[int], None] | None = None,
                   backend: str | None = None) -> tuple[nn.Module, list[LayerRecord]]:
    """prepare → calibrate → (convert) in one call; ``model`` itself is left untouched.

    recipe: a preset name ("w8a8", "w8a8-static", "w4a16-g128", ...), a Recipe or a path.
    calib_data: an iterable of batches (tuple/list → positional args, dict → keyword
    args, else the single argument) or a callable ``forward_loop(model)``.
    max_batches: observe at most this many batches (None or >= 1; with a forward loop, its
    first N forwards of the model). fq_impl: "reference" or "fused" (how fake quantization
    computes; ``backend`` is its deprecated old name).
    convert: False keeps the calibrated fake-quant model (for QAT).
    example_inputs: one batch for finding layer roles; defaults to calib_data's first
    batch.
    Returns ``(model, records)``: the quantized copy and one LayerRecord per selected layer.
    Under ``torch.distributed`` (more than one rank) ``calib_data`` is this rank's share
    (:func:`lowbit.shard_batches`) and ``max_batches`` counts this rank's batches; the ranges
    are reduced across ranks, so every rank returns the same model.
    """
    fq_impl = resolve_fq_impl(fq_impl, backend)
    check_max_batches(max_batches)
    if isinstance(model, nn.Module):
        check_model_materialized(model)
    check_calib_data(calib_data)
    first, calib_data = peek(calib_data)
    if first is None and not is_forward_loop(calib_data):
        # checked before calibrating: freezing a static quantizer that saw nothing fails
        raise ConfigError("calib_data", "an empty iterable", "at least one batch",
                          fix="pass representative inputs (a few batches are enough)")
    if example_inputs is None:
        example_inputs = first
    qmodel = prepare(model, recipe, example_inputs=example_inputs, fq_impl=fq_impl)
    with calibrate(qmodel, max_batches=max_batches):  # also bounds a forward loop's batches
        run_batches(qmodel, calib_data, max_batches, progress)
    if convert:
        qmodel = convert_model(qmodel, inplace=True)
    return qmodel, lowbit_state(qmodel).records
