"""Layer-wise algorithms across ranks: reduced statistics, one owner per layer, shared results.

The block runner keeps each rank's captured activations on that rank.  An algorithm
all-reduces what it needs from them (GPTQ's ``XᵀX`` and row count, SmoothQuant's
``max|X|``, AWQ's ``mean|X|`` and candidate errors), so every rank holds the statistics of
all ranks' rows.  The expensive per-layer work then runs once: layer ``i`` of a block is
quantized by rank :func:`owner` ``(i)`` and the result (weight, weight qparams, the layer's
record) is broadcast from it with :func:`share_layer` (:func:`run_owned` does both, and
turns one rank's error into an error on every rank), so every rank continues with
bit-identical weights.  In one process every rank owns every layer and nothing moves.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import StateError
from ..types import QParams
from . import comm


def owner(index: int) -> int:
    """The rank that computes layer ``index`` of a block (round robin; 0 alone)."""
    return index % comm.world_size() if comm.is_distributed() else 0


def owns(index: int) -> bool:
    """True when this rank computes layer ``index`` of a block."""
    return owner(index) == (comm.rank() if comm.is_distributed() else 0)


def all_reduce_count(n: int) -> int:
    """``n`` summed over the ranks (``n`` itself alone)."""
    if not comm.is_distributed():
        return n
    return int(comm.all_reduce_(torch.tensor([n], dtype=torch.int64), "sum"))


def run_owned(modules: list[nn.Module], work, records: list,
              units: list[list[int]] | None = None) -> None:
    """Call ``work(i)`` for every layer ``i`` of ``modules`` this rank owns, then give every
    rank each layer's result from its owner (:func:`share_layer`, with ``records[i]``).
    ``units``: layers computed together (e.g. layers sharing one Hessian), as lists of indices
    into ``modules``; ``work(u)`` then computes unit ``u``, owned by :func:`owner` ``(u)``.

    An error stops this rank's work and is raised on every rank (the others raise a
    :class:`StateError` naming the failing rank and its message), so no rank waits forever
    for a broadcast that will not come.  In one process: ``work(i)`` for every layer, in order.
    """
    units = [[i] for i in range(len(modules))] if units is None else units
    error = None
    for i in range(len(units)):
        if owns(i):
            try:
                work(i)
            except Exception as exc:  # re-raised below, after the other ranks hear of it
                error = exc
                break
    if not comm.is_distributed():
        if error is not None:
            raise error
        return
    failures = comm.all_gather_json(None if error is None else
                                    f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    for r, message in enumerate(failures):
        if message is not None:
            raise StateError(f"rank {r} failed while quantizing its layers of this block "
                             f"({message}); fix that rank's error (its own message says how)")
    for u, members in enumerate(units):
        for i in members:
            share_layer(modules[i], records[i], owner(u))


def share_layer(module: nn.Module, record, src: int) -> None:
    """Copy rank ``src``'s result for one quantized layer to every rank: its weight (in
    place), its weight quantizer's qparams, and its record's metrics and reason."""
    if not comm.is_distributed():
        return
    wq = getattr(module, "weight_quantizer", None)
    meta = None
    if comm.rank() == src:
        meta = {"metrics": {} if record is None else dict(record.metrics),
                "reason": None if record is None else record.reason,
                "qparams": None if wq is None or not wq.is_frozen else
                {"shape": list(wq.scale.shape), "block_size": [int(b) for b in wq.block_size]}}
    meta = comm.broadcast_json(meta, src)
    comm.broadcast_(module.weight.data, src)
    if meta["qparams"] is not None:
        shape = meta["qparams"]["shape"]
        scale = wq.scale.detach().float().clone() if comm.rank() == src else \
            torch.empty(shape, dtype=torch.float32, device=module.weight.device)
        zero = wq.zero_point.detach().clone() if comm.rank() == src else \
            torch.empty(shape, dtype=torch.int32, device=module.weight.device)
        comm.broadcast_(scale, src)
        comm.broadcast_(zero, src)
        if comm.rank() != src:
            wq.set_qparams(QParams(scale, zero, wq.spec.qtype,
                                   tuple(meta["qparams"]["block_size"])))
    if record is not None and comm.rank() != src:
        record.metrics.clear()
        record.metrics.update(meta["metrics"])
        record.reason = meta["reason"]
