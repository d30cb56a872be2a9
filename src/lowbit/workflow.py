"""``quantize_model``: prepare → calibrate → layer-wise algorithms → convert, in one call.

Without algorithms this is :func:`lowbit.model.api.quantize_model`.  With algorithms
(``["gptq"]``, ``["smoothquant", "gptq"]``, configured objects such as
``GPTQ(damp=0.01, act_order=True)`` or their dicts) the weights' ranges are set from
themselves, then the shared block runner walks the model's repeated blocks, feeding each
block the outputs of the blocks already quantized: static activation ranges of a block's
layers are observed on those inputs (one pass over the block, its own weights still float)
and frozen, then every algorithm is applied to the block in order.  Static activation ranges
of layers outside the blocks (an embedding, an LM head) are observed afterwards, in one pass
of the calibration data through the quantized model, only when such layers need them.  The algorithms' configs are kept with the model
(``lowbit_state(model).algorithms``) and saved in the checkpoint manifest.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from .algorithms import parse_algorithms, run_blocks
from .config import resolve_fq_impl
from .errors import ConfigError
from .model.api import quantize_model as _plain_quantize_model
from .model.batches import check_calib_data, check_max_batches, is_forward_loop, peek, run_batches
from .model.convert import convert as convert_model
from .model.prepare import (calibrate, end_calibration, lowbit_state, prepare, quant_modules,
                            start_calibration)
from .nn.qat import QuantModuleMixin
from .records import LayerRecord

logger = logging.getLogger(__name__)


def quantize_model(model: nn.Module, recipe: Any, calib_data: Any, *,
                   algorithms: Any = None, max_batches: int | None = None,
                   fq_impl: str = "reference", convert: bool = True,
                   example_inputs: Any = None,
                   progress: bool | Callable[[int], None] | None = None,
                   blocks: str | None = None, sequential: bool = True,
                   act_dtype: torch.dtype | None = None, seed: int = 0,
                   backend: str | None = None) -> tuple[nn.Module, list[LayerRecord]]:
    """prepare → calibrate → (algorithms) → (convert); ``model`` itself is left untouched.

    recipe: a preset name ("w8a8", "w4a16-g64", ...), a Recipe or a path.
    calib_data: an iterable of batches (tuple/list → positional args, dict → keyword args,
    else the single argument) or, without algorithms, a callable ``forward_loop(model)``.
    algorithms: names, dicts or algorithm objects applied block by block in order
    (``lowbit.algorithms.ALGORITHMS`` lists them); None or [] is plain rounding.
    max_batches: use at most this many batches. fq_impl: "reference" or "fused" (how fake
    quantization computes; ``backend`` is its deprecated old name).
    convert: False keeps the fake-quant model. example_inputs: one batch for layer roles.
    progress: called with the count of batches (no algorithms) or blocks done; True shows a
    progress bar per block. blocks: the ``ModuleList`` holding the repeated blocks (found
    automatically when None). sequential: feed each block the quantized outputs of the one
    before (False: the float outputs). act_dtype: keep captured block inputs in this dtype
    (e.g. torch.bfloat16) to save memory. seed: seeds torch before the algorithms run.
    Returns ``(model, records)``.
    """
    fq_impl = resolve_fq_impl(fq_impl, backend)
    algos = parse_algorithms(algorithms)
    if not algos:
        return _plain_quantize_model(model, recipe, calib_data, max_batches=max_batches,
                                     fq_impl=fq_impl, convert=convert,
                                     example_inputs=example_inputs,
                                     progress=progress if callable(progress) else None)
    check_max_batches(max_batches)
    check_calib_data(calib_data)
    if is_forward_loop(calib_data):
        raise ConfigError("calib_data", "a forward loop", "an iterable of batches when "
                          "algorithms are given (the runner replays them block by block)",
                          fix="pass a list of batches")
    first, calib_data = peek(calib_data)
    if first is None:
        raise ConfigError("calib_data", "an empty iterable", "at least one batch",
                          fix="pass representative inputs (a few batches are enough)")
    if not isinstance(calib_data, (list, tuple)):  # replayed twice: keep the batches
        calib_data = list(calib_data)
    if max_batches is not None:
        calib_data = calib_data[:max_batches]
    qmodel = prepare(model, recipe, example_inputs=first if example_inputs is None
                     else example_inputs, fq_impl=fq_impl)
    needing = {name for name, m in quant_modules(qmodel)
               if m.act_quantizer is not None and not m.act_quantizer.ready}
    if needing:
        start_calibration(qmodel)  # observers on: block ranges come from the runner's inputs
    else:
        with calibrate(qmodel):  # weights are observed directly
            pass
    state = lowbit_state(qmodel)
    torch.manual_seed(seed)
    logger.info("running %s block by block", ", ".join(a.name for a in algos))
    in_blocks: set[str] = set()

    def step(ctx) -> None:
        if needing:
            in_blocks.update(f"{ctx.name}.{n}" for n, _ in ctx.layers(QuantModuleMixin))
            calibrate_block(ctx)
        for algo in algos:
            algo.apply_block(ctx)

    run_blocks(qmodel, calib_data, step, blocks=blocks, sequential=sequential,
               act_dtype=act_dtype, progress=bool(progress) if not callable(progress)
               else progress, record=state.record)
    if needing:
        if needing - in_blocks:  # layers outside the blocks: one pass through the result
            with torch.no_grad():
                run_batches(qmodel, calib_data)
        end_calibration(qmodel)  # freezes what is left; block layers keep their ranges
    state.algorithms = [a.to_dict() for a in algos]
    for name, module in quant_modules(qmodel):
        record = state.record(name)
        if record is not None and any(k.startswith(tuple(a.name for a in algos))
                                      for k in record.metrics):
            record.reason += f"; weights by {'+'.join(a.name for a in algos)}"
    if convert:
        qmodel = convert_model(qmodel, inplace=True)
    return qmodel, state.records


def calibrate_block(ctx) -> None:
    """Observe the ranges of the block's lowbit layers over the block's inputs (its weights
    float while observing) and freeze them."""
    modules = [m for _, m in ctx.layers(QuantModuleMixin)]
    ctx.run()
    for module in modules:
        module.freeze()
