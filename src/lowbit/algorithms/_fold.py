"""Per-input-channel scales folded exactly into the operation before a group of layers.

Shared by AWQ and SmoothQuant.  Both rewrite ``y = W x`` as ``y = (W·diag(s)) (x / s)``; the
division is folded into the producer of ``x`` when that is exact:

* the **groups** are the lowbit Linear layers of a block that receive the *same input tensor*
  in a forward pass (found with forward hooks, not from architecture names): e.g. a decoder's
  q/k/v projections, or its gate/up projections;
* the **producer** is the module whose forward returned that very tensor; a LayerNorm or
  RMSNorm (a module with a 1-D ``weight`` of the input width, and ``bias`` if any) absorbs
  ``1/s`` into ``weight`` and ``bias``;
* when no norm returned it (the input is made by an op, e.g. ``act(gate(x)) * up(x)`` before a
  decoder's down projection, or attention's ``softmax(QKᵀ)·V`` before ``o_proj``), the
  **candidates** are the Linear layers of the block called earlier whose output width is the
  group's input width, nearest first; one absorbs ``1/s`` into its output rows (weight and
  bias) when that is exact (``up_proj`` → ``down_proj``; ``v_proj`` → ``o_proj`` when every
  value head has its own output head), which the check below decides.

A fold is kept only if the block's float output is unchanged (relative error ≤ ``tol`` on the
first captured call, fake quantization off; under ``torch.distributed`` the largest error of
all ranks decides for all); otherwise it is undone, so a producer whose output has other
consumers (a residual stream, a layer outside the group) is never changed silently.
Groups without a foldable producer are left as they are and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..distributed import all_reduce_
from ..nn.qat import QuantLinear, weight_matrix

#: Largest relative change of the block's float output a fold may cause.
FOLD_TOLERANCE = 1e-5


@dataclass
class InputGroup:
    """Layers of one block that share an input tensor, and the module that produced it."""

    names: list[str]
    layers: list[nn.Module]
    producer_name: str | None = None
    producer: nn.Module | None = None
    inputs: list[torch.Tensor] = field(default_factory=list)  # [rows, K] per captured call
    #: Linear layers that may produce the input (see the module doc), nearest first
    candidates: list[tuple[str, nn.Module]] = field(default_factory=list)

    @property
    def foldable(self) -> bool:
        """Whether a fold can be tried (a norm producer or a Linear candidate)."""
        return self.producer is not None or bool(self.candidates)


def _is_norm(module: nn.Module, width: int) -> bool:
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    return (isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == width
            and (b is None or (isinstance(b, torch.Tensor) and b.shape == w.shape))
            and not isinstance(module, (nn.Linear, nn.Embedding)))


def find_input_groups(ctx) -> list[InputGroup]:
    """The groups of the block in ``ctx`` (see the module doc), in execution order, with the
    inputs each group saw on every captured call (``[rows, K]``, float32)."""
    linears = [(n, m) for n, m in ctx.layers(QuantLinear) if m.weight_quantizer is not None]
    names_of = {id(m): n for n, m in ctx.layers()}
    outputs: dict[int, str] = {}  # id(tensor) -> producing module's name (current call)
    seen: list[tuple[str, int]] = []  # (layer name, id of its input) in call order
    calls: list[dict[str, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    keep: list[torch.Tensor] = []  # keeps one call's tensors alive: their ids stay unique

    def out_hook(module, _args, out):
        if isinstance(out, torch.Tensor) and id(module) in names_of:
            outputs[id(out)] = names_of[id(module)]
            keep.append(out)

    def in_hook(module, args):
        name = names_of[id(module)]
        x = args[0]
        current[name] = x.detach().reshape(-1, x.shape[-1]).float()
        if len(calls) == 0:
            seen.append((name, id(x)))
            keep.append(x)
            producers[name] = outputs.get(id(x))

    producers: dict[str, str | None] = {}
    handles = [m.register_forward_hook(out_hook) for _, m in ctx.layers()]
    handles += [m.register_forward_pre_hook(in_hook) for _, m in linears]
    try:
        with torch.no_grad():
            for i in range(len(ctx.inputs)):
                args, kwargs = ctx.inputs.call(i, _dtype(ctx.module) if ctx.inputs.act_dtype
                                               else None)
                current = {}
                ctx.module(*args, **kwargs)
                calls.append(current)
                outputs.clear()
                keep.clear()  # ids of the first call are already recorded in `seen`
    finally:
        for h in handles:
            h.remove()
    by_input: dict[int, list[str]] = {}
    for name, key in seen:
        by_input.setdefault(key, []).append(name)
    modules = dict(ctx.layers())
    order = [name for name, _ in seen]
    groups = []
    for names in by_input.values():
        producer = producers.get(names[0])
        layers = [modules[n] for n in names]
        width = layers[0].in_features
        ok = producer is not None and _is_norm(modules[producer], width)
        candidates = [] if ok or producer is not None else [
            (n, modules[n]) for n in reversed(order[:order.index(names[0])])
            if n not in names and modules[n].out_features == width]
        groups.append(InputGroup(names, layers, producer if ok else None,
                                 modules[producer] if ok else None,
                                 [c[names[0]] for c in calls if names[0] in c],
                                 list(dict(candidates).items())))
    return groups


def _dtype(module: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _float_output(ctx) -> torch.Tensor:
    quantizers = [q for _, m in ctx.layers() if hasattr(m, "quantizers")
                  for q in m.quantizers()]
    enabled = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        args, kwargs = ctx.inputs.call(0, _dtype(ctx.module) if ctx.inputs.act_dtype else None)
        with torch.no_grad():
            out = ctx.module(*args, **kwargs)
    finally:
        for q, e in zip(quantizers, enabled):
            q.enabled = e
    return (out if isinstance(out, torch.Tensor) else out[0]).detach().float()


def fold_scales(ctx, group: InputGroup, s: torch.Tensor, tol: float = FOLD_TOLERANCE) -> bool:
    """Fold ``x / s`` into the group's producer (its norm, else the first candidate Linear for
    which it is exact) and ``W·diag(s)`` into its layers; a fold is kept only if the block's
    float output moves by at most ``tol`` (relative).  The changed layers' weight qparams are
    re-chosen from the new weights.  Returns whether a fold was kept; ``group.producer`` and
    ``producer_name`` then name the module that absorbed it."""
    options = [(group.producer_name, group.producer)] if group.producer is not None \
        else list(group.candidates)
    if not options:
        return False
    before = _float_output(ctx)
    for name, producer in options:
        saved = [(p, p.detach().clone()) for p in _fold_params(producer, group)]
        with torch.no_grad():
            for p in _producer_params(producer):  # [K] for a norm, [K, in] for a Linear
                p.div_(s.to(p.dtype).reshape((-1,) + (1,) * (p.dim() - 1)))
            for layer in group.layers:
                layer.weight.mul_(s.to(layer.weight.dtype).unsqueeze(0))
        after = _float_output(ctx)
        rel = (after - before).norm() / before.norm().clamp_min(1e-30)
        rel = float(all_reduce_(rel.reshape(1).double(), "max"))  # one decision for all ranks
        if rel <= tol:
            group.producer_name, group.producer = name, producer
            for layer in group.layers + [producer]:
                wq = getattr(layer, "weight_quantizer", None)
                if wq is not None:
                    wq.freeze(weight_matrix(layer.weight).detach())
            return True
        with torch.no_grad():
            for p, old in saved:
                p.copy_(old)
    return False


def _producer_params(producer: nn.Module) -> list[torch.Tensor]:
    params = [producer.weight]
    if getattr(producer, "bias", None) is not None:
        params.append(producer.bias)
    return params


def _fold_params(producer: nn.Module, group: InputGroup) -> list[torch.Tensor]:
    return _producer_params(producer) + [layer.weight for layer in group.layers]
