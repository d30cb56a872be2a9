"""``quantize_model``: prepare → calibrate → layer-wise algorithms → convert, in one call.

Without algorithms this is :func:`lowbit.model.api.quantize_model`.  With algorithms
(``["gptq"]``, ``["smoothquant", "gptq"]``, configured objects such as
``GPTQ(damp=0.01, act_order=True)`` or their dicts) the weights' ranges are set from
themselves first.  Each algorithm has a ``stage`` (:data:`lowbit.algorithms.base.STAGES`):
``"float"`` ones (``bn_fold``, ``cle``) rewrite a copy of the float model before it is
prepared; ``"block"`` ones run on the shared block runner, which walks the model's repeated
blocks (or, in a model without any, its Linear/Conv layers one by one), feeding each unit the
outputs of the units already quantized — static activation ranges of a unit's layers are
observed on those inputs (one pass, its own weights still float) and frozen before the
algorithms change it, and layers outside the units (an embedding, an LM head) are observed
afterwards in one pass through the result, only when they need data; ``"quantized"`` ones
(``bias_correction``, ``bn_reestimate``, ``bn_affine``) run on the whole calibrated fake-quant
model afterwards (without block algorithms, static ranges come from one pass of the
calibration data first).  Within a stage the given order is kept; the float model (every
quantizer off) is the runner's reference.  What each step did goes into the layer records.
The algorithms' configs are kept with the model
(``lowbit_state(model).algorithms``) and saved in the checkpoint manifest.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable

import torch
from torch import nn

from .algorithms import parse_algorithms, run_blocks
from .algorithms._runner_layers import fake_quant_off
from .algorithms.base import STAGES
from .config import resolve_fq_impl
from .distributed.observers import reduce_model_observers
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
    automatically when None; a model without any runs layer by layer) or ``"layers"``. sequential: feed each block the quantized outputs of the one
    before (False: the float outputs). act_dtype: keep captured block inputs in this dtype
    (e.g. torch.bfloat16) to save memory. seed: seeds torch before the algorithms run.
    Returns ``(model, records)``.  Under ``torch.distributed`` (more than one rank)
    ``calib_data`` is this rank's share (:func:`lowbit.shard_batches`): ranges, Hessians and
    activation statistics are combined across ranks and every rank returns the same model
    (save it from rank 0: ``lowbit.distributed.is_main()``).
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
    staged = {stage: [a for a in algos if a.stage == stage] for stage in STAGES}
    notes: dict[str, dict] = {}
    if staged["float"]:
        model = copy.deepcopy(model)  # the caller's model is left untouched
        for algo in staged["float"]:
            for name, metrics in algo.apply_float(model, calib_data).items():
                notes.setdefault(name, {}).update(metrics)
    qmodel = prepare(model, recipe, example_inputs=first if example_inputs is None
                     else example_inputs, fq_impl=fq_impl)
    _write_notes(lowbit_state(qmodel), qmodel, notes)
    needing = {name for name, m in quant_modules(qmodel)
               if m.act_quantizer is not None and not m.act_quantizer.ready}
    block_wise = bool(staged["block"]) and bool(needing)
    if block_wise:
        start_calibration(qmodel)  # observers on: block ranges come from the runner's inputs
    else:
        with calibrate(qmodel):  # weights are observed directly; activations if they need data
            if needing:
                run_batches(qmodel, calib_data)
    state = lowbit_state(qmodel)
    # the float model as calibrated, for quantized-stage algorithms that compare against it
    reference = (copy.deepcopy(qmodel) if any(a.wants_float_copy for a in staged["quantized"])
                 else None)
    torch.manual_seed(seed)
    logger.info("running %s block by block", ", ".join(a.name for a in algos))
    in_blocks: set[str] = set()

    def step(ctx) -> None:
        if block_wise:
            in_blocks.update(ctx.name if not n else f"{ctx.name}.{n}"
                             for n, _ in ctx.layers(QuantModuleMixin))
            calibrate_block(ctx)
        for algo in staged["block"]:
            algo.apply_block(ctx)

    if staged["block"]:
        run_blocks(qmodel, calib_data, step, blocks=blocks, sequential=sequential,
                   act_dtype=act_dtype, progress=bool(progress) if not callable(progress)
                   else progress, record=state.record,
                   reference=(lambda: fake_quant_off(qmodel))
                   if any(a.wants_reference for a in staged["block"]) else None)
    if block_wise:
        if needing - in_blocks:  # layers outside the blocks: one pass through the result
            with torch.no_grad():
                run_batches(qmodel, calib_data)
        end_calibration(qmodel)  # freezes what is left; block layers keep their ranges
    for algo in staged["quantized"]:
        algo.apply_quantized(qmodel, calib_data, state.record, reference)
    applied = [a for stage in STAGES for a in staged[stage]]
    state.algorithms = [a.to_dict() for a in applied]
    for name, module in quant_modules(qmodel):
        record = state.record(name)
        steps = [a.name for a in applied if record is not None
                 and any(k.startswith(a.name) for k in record.metrics)]
        if steps:
            record.reason += f"; weights by {'+'.join(steps)}"
    if convert:
        qmodel = convert_model(qmodel, inplace=True)
    return qmodel, state.records


def _write_notes(state, qmodel: nn.Module, notes: dict[str, dict]) -> None:
    """Put what the float-stage algorithms did into the layer records; a module without a
    record (a BatchNorm kept float, say) gets a ``float`` record saying so."""
    for name, metrics in notes.items():
        record = state.record(name)
        if record is None:
            module = qmodel.get_submodule(name)
            record = LayerRecord(name, type(module).__name__, "float",
                                 "not quantized by the recipe; " + "; ".join(
                                     f"{k}: {v}" for k, v in metrics.items()))
            state.records.append(record)
        record.metrics.update(metrics)


def calibrate_block(ctx) -> None:
    """Observe the ranges of the block's lowbit layers over the block's inputs (its weights
    float while observing) and freeze them (under ``torch.distributed`` the observers are
    reduced across ranks first, so every rank freezes the ranges of all ranks' inputs)."""
    modules = [m for _, m in ctx.layers(QuantModuleMixin)]
    ctx.run()
    reduce_model_observers(ctx.module)
    for module in modules:
        module.freeze()
