"""The one call for the common case, and a PTQ pipeline object for seed 004's workflow."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..records import LayerRecord
from .batches import (check_calib_data, check_max_batches, check_model_materialized,
                      is_forward_loop, peek, run_batches)
from .convert import convert as convert_model
from .prepare import calibrate, lowbit_state, prepare
from .size import estimate_model_size

logger = logging.getLogger(__name__)


def quantize_model(model: nn.Module, recipe: Any, calib_data: Any, *,
                   max_batches: int | None = None, backend: str = "reference",
                   convert: bool = True, example_inputs: Any = None,
                   progress: Callable[[int], None] | None = None
                   ) -> tuple[nn.Module, list[LayerRecord]]:
    """prepare → calibrate → (convert) in one call; ``model`` itself is left untouched.

    recipe: a preset name ("w8a8", "w8a8-static", "w4a16-g128", ...), a Recipe or a path.
    calib_data: an iterable of batches (tuple/list → positional args, dict → keyword
    args, else the single argument) or a callable ``forward_loop(model)``.
    max_batches: observe at most this many batches (None or >= 1; with a forward loop, its
    first N forwards of the model). backend: "reference" or "native".
    convert: False keeps the calibrated fake-quant model (for QAT).
    example_inputs: one batch for finding layer roles; defaults to calib_data's first
    batch.
    Returns ``(model, records)``: the quantized copy and one LayerRecord per selected layer.
    """
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
    qmodel = prepare(model, recipe, example_inputs=example_inputs, backend=backend)
    with calibrate(qmodel, max_batches=max_batches):  # also bounds a forward loop's batches
        run_batches(qmodel, calib_data, max_batches, progress)
    if convert:
        qmodel = convert_model(qmodel, inplace=True)
    return qmodel, lowbit_state(qmodel).records


class PTQPipeline:
    """Post-training quantization as an object (the workflow of seed 004).

    >>> pipe = PTQPipeline(model, recipe="w8a8-static")
    >>> pipe.calibrate(loader, num_batches=10)
    >>> qmodel = pipe.convert()
    >>> pipe.get_model_size()       # (float bytes, quantized bytes)

    ``input_fn`` picks the model input from a loader batch; by default an ``(x, y)``
    tuple or list gives ``x`` and anything else is passed on as it is.
    """

    def __init__(self, model: nn.Module, recipe: Any = "w8a8-static", *,
                 backend: str = "reference", input_fn: Callable[[Any], Any] | None = None):
        self.float_model = model
        self.recipe = recipe
        self.backend = backend
        self.input_fn = input_fn or _inputs_of
        self.model: nn.Module | None = None
        self.quantized_model: nn.Module | None = None

    def calibrate(self, loader: Any, num_batches: int | None = None) -> nn.Module:
        """Prepare the model and observe up to ``num_batches`` batches of ``loader``."""
        check_max_batches(num_batches, "num_batches")
        first, batches = peek(self.input_fn(b) for b in loader)
        if first is None:
            raise ConfigError("loader", "an empty iterable", "at least one batch",
                              fix="pass a loader that yields calibration batches")
        self.model = prepare(self.float_model, self.recipe, example_inputs=first,
                             backend=self.backend)
        self.quantized_model = None  # a new calibration invalidates an earlier convert
        with calibrate(self.model):
            run_batches(self.model, batches, num_batches)
        return self.model

    def convert(self) -> nn.Module:
        """The real low-bit model (the calibrated fake-quant model is kept)."""
        if self.model is None:
            raise ConfigError("PTQPipeline", "not calibrated", "calibrate() before convert()",
                              fix="call pipeline.calibrate(loader, num_batches) first")
        self.quantized_model = convert_model(self.model)
        return self.quantized_model

    @property
    def records(self) -> list[LayerRecord]:
        return [] if self.model is None else lowbit_state(self.model).records

    def get_model_size(self) -> tuple[int, int]:
        """``(float bytes, quantized bytes)`` of the converted model."""
        size = estimate_model_size(self.quantized_model or self.convert())
        return size["float_bytes"], size["quantized_bytes"]

    def evaluate(self, fn: Callable[[nn.Module], Any]) -> dict:
        """``fn(model)`` on the float and the quantized model: ``{"float": .., "quantized": ..}``."""
        quantized = self.quantized_model or self.convert()
        return {"float": fn(self.float_model), "quantized": fn(quantized)}

    def benchmark_inference(self, example: Any, repeats: int = 20) -> dict:
        """Median latency (ms) of the float and quantized model on one batch."""
        quantized = self.quantized_model or self.convert()
        return {"float_ms": _median_ms(self.float_model, example, repeats),
                "quantized_ms": _median_ms(quantized, example, repeats)}


def _inputs_of(batch: Any) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor) \
            and not batch[1].is_floating_point():
        return batch[0]
    return batch


def _median_ms(model: nn.Module, example: Any, repeats: int) -> float:
    from .batches import call_batch

    times = []
    with torch.inference_mode():
        call_batch(model, example)
        for _ in range(repeats):
            t0 = time.perf_counter()
            call_batch(model, example)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]
