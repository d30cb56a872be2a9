"""``PTQPipeline``: post-training quantization as an object (calibrate, convert, size,
evaluate, benchmark), over :func:`lowbit.prepare`, :func:`lowbit.calibrate` and
:func:`lowbit.convert`."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from ..config import resolve_fq_impl
from ..errors import ConfigError
from ..model.batches import call_batch, check_max_batches, check_module, peek, run_batches
from ..model.convert import convert as convert_model
from ..model.prepare import calibrate, lowbit_state, prepare
from ..model.size import estimate_model_size
from ..recipe import load_recipe
from ..records import LayerRecord


class PTQPipeline:
    """Post-training quantization as an object.

    >>> pipe = PTQPipeline(model, recipe="w8a8-static")
    >>> pipe.calibrate(loader, num_batches=10)
    >>> qmodel = pipe.convert()
    >>> pipe.get_model_size()       # (float bytes, quantized bytes)

    ``input_fn`` picks the model input from a loader batch; by default an ``(x, y)``
    tuple or list gives ``x`` and anything else is passed on as it is.
    """

    def __init__(self, model: nn.Module, recipe: Any = "w8a8-static", *,
                 fq_impl: str = "reference", input_fn: Callable[[Any], Any] | None = None,
                 backend: str | None = None):
        check_module(model)
        self.float_model = model
        self.recipe = load_recipe(recipe)  # a bad name fails here, not at calibrate
        self.fq_impl = resolve_fq_impl(fq_impl, backend)
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
                             fq_impl=self.fq_impl)
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
    times = []
    with torch.inference_mode():
        call_batch(model, example)
        for _ in range(repeats):
            t0 = time.perf_counter()
            call_batch(model, example)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]
