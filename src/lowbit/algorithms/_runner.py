"""The sequential block runner shared by every layer-wise algorithm.

A model with repeated blocks (a decoder's ``layers``, BERT's ``encoder.layer``) is
processed one block at a time:

1. :func:`find_blocks` picks the blocks: the longest run of modules of one class inside an
   ``nn.ModuleList`` (or the ``ModuleList`` the user names).
2. :func:`capture_block_inputs` runs the model on the calibration batches until the first
   block is called, and keeps that call's positional and keyword arguments (attention
   masks, position embeddings...); key/value caches are switched off.
3. :func:`run_blocks` then, block by block, hands a :class:`BlockContext` to ``step`` (the
   algorithms: they may run the block over its inputs with hooks to collect what they need,
   and change its weights), and computes the block's outputs, which become the next block's
   inputs.  ``sequential=True`` feeds the *changed* block's outputs forward (errors of
   earlier blocks are seen and compensated by later ones); ``sequential=False`` feeds the
   float outputs, computed before ``step`` changes the block.

Under ``torch.distributed`` each rank captures and replays its own calibration batches;
the algorithms combine their statistics across ranks (:mod:`lowbit.distributed.layers`).

Memory: the captured arguments of every batch for one block boundary, plus one block's
state; the hidden states may be kept in a smaller dtype (``act_dtype``, e.g. bfloat16).
``reference`` (optional) is a callable returning a context manager under which the model
computes its *reference* (e.g. float) outputs; the runner then also keeps each unit's inputs
in the reference model (``ctx.reference_inputs``: in block mode propagated through every
block *before* ``step`` changes it, in layer mode captured from the model before any step),
so that an algorithm can fit a unit's quantized output to the float model's.

A model without repeated blocks (a CNN) is processed **layer by layer** instead
(``blocks="layers"``, or automatically when :func:`find_blocks` finds no blocks): the units are
the model's Linear/Conv layers (``layer_kinds``) in the order the model first calls them, and
each layer's inputs are captured from the whole model, with every layer before it already
changed by ``step`` (``sequential=True``) or from the model as it was before any step
(``sequential=False``).  A layer called several times per forward is seen at its first call.

The runner knows nothing of any algorithm.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..distributed import is_main
from ..errors import ConfigError, StateError
from ..model.batches import call_batch, check_calib_data, is_forward_loop
from ..nn.qat import QuantModuleMixin

logger = logging.getLogger(__name__)

#: ``blocks=`` value that asks for the layer-wise mode.
LAYERS = "layers"

#: The layer types the layer-wise mode visits (lowbit's QAT modules subclass them).
LAYER_KINDS: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

#: Keyword arguments that carry a key/value cache: replaced by None while blocks are replayed.
CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past")


class _Captured(Exception):
    """Raised by the first block's pre-hook to stop the model's forward early."""


def find_blocks(model: nn.Module, blocks: str | None = None) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of the model's repeated blocks, in order.

    blocks: the qualified name of an ``nn.ModuleList`` to use (e.g. ``"model.layers"``);
    None finds the longest run of consecutive same-class children of any ``ModuleList``
    (the first one on a tie).  Raises :class:`ConfigError` when there is none.
    """
    if blocks is not None:
        try:
            container = model.get_submodule(blocks)
        except AttributeError:
            container = None
        if not isinstance(container, nn.ModuleList) or len(container) == 0:
            raise ConfigError("blocks", blocks, "the name of a non-empty nn.ModuleList in the "
                              "model", fix="e.g. blocks='model.layers' for a Llama decoder")
        return [(f"{blocks}.{i}", m) for i, m in enumerate(container)]
    best: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        run: list[tuple[str, nn.Module]] = []
        for i, child in enumerate(module):
            if run and type(child) is not type(run[-1][1]):
                run = []
            run.append((f"{name}.{i}" if name else str(i), child))
            if len(run) > len(best):
                best = list(run)
    if not best:
        raise ConfigError("model", type(model).__name__, "a model with repeated blocks in an "
                          "nn.ModuleList", fix="pass blocks='<name of the ModuleList>' or "
                          "quantize without a layer-wise algorithm")
    return best


@dataclass
class BlockInputs:
    """The calls of one block: per batch, positional ``args`` and keyword ``kwargs``.

    The hidden state is ``args[0]`` (or ``kwargs['hidden_states']`` when there are no
    positional arguments); the other arguments are the same for every block.
    """

    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)
    act_dtype: torch.dtype | None = None

    def __len__(self) -> int:
        return len(self.args)

    def hidden(self, i: int) -> torch.Tensor:
        return self.args[i][0] if self.args[i] else self.kwargs[i]["hidden_states"]

    def call(self, i: int, dtype: torch.dtype | None = None) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of call ``i``, the hidden state cast to ``dtype``."""
        args, kwargs = self.args[i], dict(self.kwargs[i])
        if dtype is not None:
            if args:
                args = (args[0].to(dtype),) + tuple(args[1:])
            else:
                kwargs["hidden_states"] = kwargs["hidden_states"].to(dtype)
        return args, kwargs

    def with_hidden(self, outputs: list[torch.Tensor]) -> "BlockInputs":
        """The same calls with each hidden state replaced by ``outputs[i]`` (stored in
        ``act_dtype`` when set)."""
        args, kwargs = [], []
        for i, out in enumerate(outputs):
            out = out if self.act_dtype is None else out.to(self.act_dtype)
            if self.args[i]:
                args.append((out,) + tuple(self.args[i][1:]))
                kwargs.append(self.kwargs[i])
            else:
                args.append(())
                kwargs.append(dict(self.kwargs[i], hidden_states=out))
        return BlockInputs(args, kwargs, self.act_dtype)


def _hidden_of(output: Any) -> torch.Tensor:
    """The hidden state a block returns: the tensor itself or the first item of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise StateError(f"a block returned {type(output).__name__}; the runner needs a tensor or "
                     "a tuple whose first item is the hidden state")


def _no_cache(kwargs: dict) -> dict:
    out = dict(kwargs)
    for key in CACHE_KWARGS:
        if key in out:
            out[key] = None
    if "use_cache" in out:
        out["use_cache"] = False
    return out


def capture_block_inputs(model: nn.Module, first_block: nn.Module, calib_data: Any,
                         max_batches: int | None = None,
                         act_dtype: torch.dtype | None = None) -> BlockInputs:
    """Run ``model`` on each calibration batch until ``first_block`` is called; keep that
    call's arguments (hidden state in ``act_dtype`` when set).  The rest of each forward is
    skipped.  Raises :class:`ConfigError` when the block is never called."""
    check_calib_data(calib_data)
    if is_forward_loop(calib_data):
        raise ConfigError("calib_data", "a forward loop", "an iterable of batches for a "
                          "layer-wise algorithm", fix="pass a list of batches")
    captured = BlockInputs(act_dtype=act_dtype)

    def hook(_module, args, kwargs):
        args = tuple(args)
        if act_dtype is not None and args:
            args = (args[0].to(act_dtype),) + args[1:]
        kwargs = _no_cache(kwargs)
        if not args and act_dtype is not None and "hidden_states" in kwargs:
            kwargs["hidden_states"] = kwargs["hidden_states"].to(act_dtype)
        captured.args.append(args)
        captured.kwargs.append(kwargs)
        raise _Captured

    config = getattr(model, "config", None)
    old_cache = getattr(config, "use_cache", None)
    if old_cache is not None:
        config.use_cache = False
    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for n, batch in enumerate(calib_data):
                if max_batches is not None and n >= max_batches:
                    break
                try:
                    call_batch(model, batch)
                except _Captured:
                    continue
                raise ConfigError("blocks", type(first_block).__name__, "a block the model "
                                  "calls on every batch", fix="name the ModuleList the "
                                  "forward runs through (blocks='...')")
    finally:
        handle.remove()
        if old_cache is not None:
            config.use_cache = old_cache
    if not len(captured):
        raise ConfigError("calib_data", "an empty iterable", "at least one batch",
                          fix="pass representative inputs (a few batches are enough)")
    for args, kwargs in zip(captured.args, captured.kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            raise ConfigError("blocks", type(first_block).__name__, "a block whose first "
                              "argument (or hidden_states) is a tensor",
                              fix="name another ModuleList with blocks='...'")
    return captured


@dataclass
class BlockContext:
    """What ``step`` gets for one block: its name, module, inputs and the run helpers.

    ``record(layer_name)`` returns the LayerRecord of a layer given by its name inside the
    block (or None); algorithms add their metrics to it.
    """

    name: str
    module: nn.Module
    inputs: BlockInputs
    index: int
    count: int
    record: Callable[[str], Any] = lambda _name: None
    reference_inputs: BlockInputs | None = None
    reference: Callable[[], Any] | None = None

    def run_reference(self) -> list[torch.Tensor] | None:
        """The unit's outputs in the reference model (under ``reference()``, on
        ``reference_inputs``), or None when the runner was given no reference."""
        if self.reference is None or self.reference_inputs is None:
            return None
        with self.reference():
            return run_block(self.module, self.reference_inputs)

    def run(self) -> list[torch.Tensor]:
        """Run the block (no grad) over every captured call; the hidden outputs, in order."""
        return run_block(self.module, self.inputs)

    def layers(self, kind: type | tuple[type, ...] = nn.Module
               ) -> Iterator[tuple[str, nn.Module]]:
        """``(name inside the block, module)`` of the block's submodules of ``kind``; a unit
        that is itself of ``kind`` (layer-wise mode) is yielded under the name ``""``."""
        for name, module in self.module.named_modules():
            if (name or kind is not nn.Module) and isinstance(module, kind):
                yield name, module


def _block_dtype(block: nn.Module) -> torch.dtype | None:
    for p in block.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


@contextmanager
def weights_quantized_once(block: nn.Module):
    """Within the context each lowbit layer of ``block`` uses its fake-quantized weight
    computed once on entry, instead of re-quantizing it on every call (the replay calls the
    block once per batch; the weights must not change inside the context)."""
    patched = []
    with torch.no_grad():
        for module in block.modules():
            wq = getattr(module, "weight_quantizer", None)
            if isinstance(module, QuantModuleMixin) and wq is not None and wq.enabled \
                    and not wq.observing:
                weight = module.quantized_weight().detach()
                module.quantized_weight = (lambda w=weight: w)  # instance attribute
                patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.quantized_weight


def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """The block's hidden outputs for every captured call (no grad, in the block's dtype;
    each fake-quantized weight computed once)."""
    dtype = _block_dtype(block) if inputs.act_dtype is not None else None
    outs = []
    with torch.no_grad(), weights_quantized_once(block):
        for i in range(len(inputs)):
            args, kwargs = inputs.call(i, dtype)
            outs.append(_hidden_of(block(*args, **kwargs)))
    return outs


def run_blocks(model: nn.Module, calib_data: Any, step: Callable[[BlockContext], None], *,
               blocks: str | None = None, sequential: bool = True,
               max_batches: int | None = None, act_dtype: torch.dtype | None = None,
               progress: bool | Callable[[int], None] = False,
               record: Callable[[str], Any] | None = None,
               layer_kinds: tuple[type, ...] = LAYER_KINDS,
               reference: Callable[[], Any] | None = None) -> int:
    """Call ``step`` on each block of ``model`` with the inputs the model gives that block.

    blocks: the ModuleList of blocks (None: found, or layer-wise when the model has none);
    ``"layers"`` runs layer by layer over the modules of ``layer_kinds`` (module doc).

    sequential: True feeds each block the outputs of the blocks already changed by
    ``step``; False feeds the float outputs.  progress: True shows a tqdm bar per block
    (on stderr; rank 0 only under torch.distributed), a callable is called with the count
    of blocks done, False logs only.
    record: maps a qualified layer name to its LayerRecord (passed on in the context).
    reference: a callable returning a context manager for the reference model (module doc).
    Returns the number of blocks processed.
    """
    if blocks == LAYERS or (blocks is None and not _has_blocks(model)):
        return _run_layers(model, calib_data, step, sequential=sequential,
                           max_batches=max_batches, act_dtype=act_dtype, progress=progress,
                           record=record, kinds=layer_kinds, reference=reference)
    found = find_blocks(model, blocks)
    inputs = capture_block_inputs(model, found[0][1], calib_data, max_batches, act_dtype)
    ref_inputs = None
    if reference is not None:
        with reference():
            ref_inputs = capture_block_inputs(model, found[0][1], calib_data, max_batches,
                                              act_dtype)
    bar = None
    if progress is True and is_main():  # one bar, on rank 0 under torch.distributed
        from tqdm import tqdm

        bar = tqdm(total=len(found), desc="blocks", unit="block", leave=False)
    try:
        for index, (name, block) in enumerate(found):
            float_outs = None if sequential else run_block(block, inputs)
            ctx = BlockContext(name, block, inputs, index, len(found), _recorder(record, name),
                               ref_inputs, reference)
            ref_outs = ctx.run_reference()  # before step changes the block
            step(ctx)
            outs = run_block(block, inputs) if sequential else float_outs
            inputs = inputs.with_hidden(outs)
            if ref_outs is not None:
                ref_inputs = ref_inputs.with_hidden(ref_outs)
            logger.info("block %d/%d (%s) done", index + 1, len(found), name)
            _tick(bar, progress, index + 1)
    finally:
        if bar is not None:
            bar.close()
    return len(found)


def _recorder(record: Callable[[str], Any] | None, unit: str) -> Callable[[str], Any]:
    """Maps a name inside ``unit`` (``""``: the unit itself) to its record."""
    if record is None:
        return lambda _n: None
    return lambda n: record(f"{unit}.{n}" if n else unit)


def _has_blocks(model: nn.Module) -> bool:
    try:
        find_blocks(model)
    except ConfigError:
        return False
    return True


def find_layers(model: nn.Module, calib_data: Any, kinds: tuple[type, ...] = LAYER_KINDS
                ) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of the modules of ``kinds`` in the order the model first
    calls them on the first calibration batch (modules it never calls are left out)."""
    check_calib_data(calib_data)
    named = [(n, m) for n, m in model.named_modules() if n and isinstance(m, kinds)]
    order: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, i=i: order.append(i) if i not in order
                                         else None) for i, (_, m) in enumerate(named)]
    try:
        with torch.no_grad():
            for batch in calib_data:
                call_batch(model, batch)
                break
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ConfigError("model", type(model).__name__, "a model whose forward calls at least "
                          f"one of {[k.__name__ for k in kinds]}",
                          fix="quantize without a layer-wise algorithm")
    return [named[i] for i in order]


def _run_layers(model: nn.Module, calib_data: Any, step: Callable[[BlockContext], None], *,
                sequential: bool, max_batches: int | None, act_dtype: torch.dtype | None,
                progress: bool | Callable[[int], None],
                record: Callable[[str], Any] | None, kinds: tuple[type, ...],
                reference: Callable[[], Any] | None) -> int:
    """The layer-wise mode of :func:`run_blocks` (see the module doc)."""
    found = find_layers(model, calib_data, kinds)

    def capture(layer: nn.Module) -> BlockInputs:
        return capture_block_inputs(model, layer, calib_data, max_batches, act_dtype)

    before = None if sequential else [capture(m) for _, m in found]
    refs = [None] * len(found)
    if reference is not None:
        with reference():
            refs = [capture(m) for _, m in found]
    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(found), desc="layers", unit="layer", leave=False)
    try:
        for index, (name, layer) in enumerate(found):
            inputs = capture(layer) if sequential else before[index]
            step(BlockContext(name, layer, inputs, index, len(found), _recorder(record, name),
                              refs[index], reference))
            logger.info("layer %d/%d (%s) done", index + 1, len(found), name)
            _tick(bar, progress, index + 1)
    finally:
        if bar is not None:
            bar.close()
    return len(found)


def _tick(bar, progress, done: int) -> None:
    """One unit finished: advance the progress bar, or call the caller's ``progress(done)``."""
    if bar is not None:
        bar.update(1)
    elif callable(progress):
        progress(done)
