"""Ranks, process groups and the few collectives lowbit uses (``torch.distributed``).

lowbit does not launch processes: ``torchrun`` (or the user's own program) does, and
lowbit joins in when ``torch.distributed`` is initialized with more than one rank.  Then
:func:`is_distributed` is true and calibration and the layer-wise algorithms combine
their statistics across ranks; otherwise every function here is a no-op and lowbit runs
exactly as in one process.

Collectives run on the group's device: CPU tensors for gloo, the current CUDA device for
NCCL (tensors are moved there and back).  Small metadata crosses as JSON bytes in uint8
tensors, never pickled.  :func:`local` turns the collectives off for work that only one
rank does (a report written by rank 0).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from ..errors import ConfigError

logger = logging.getLogger(__name__)

_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}
_local_depth = [0]  # > 0 inside local(): this process works alone


def is_initialized() -> bool:
    """True when a default ``torch.distributed`` process group exists."""
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True when lowbit combines work across ranks: a process group with more than one
    rank is initialized and no :func:`local` block is active."""
    return _local_depth[0] == 0 and is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the default group (0 without ``torch.distributed``)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of ranks in the default group (1 without ``torch.distributed``)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and shows
    progress bars."""
    return rank() == 0


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Inside this block lowbit behaves as in one process (no collectives), for work only
    one rank does, e.g. ``if is_main(): with local(): lowbit.analyze(...)``."""
    _local_depth[0] += 1
    try:
        yield
    finally:
        _local_depth[0] -= 1


def backend_for(device: str | torch.device) -> str:
    """The process-group backend for models on ``device``: ``"nccl"`` for CUDA, ``"gloo"``
    for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), with the backend for ``device``.

    Returns True when this call created the group (the caller then ends it with
    :func:`shutdown`); False when a group already exists or the environment names one
    process (or none).
    """
    if is_initialized():
        return False
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError("WORLD_SIZE", os.environ.get("WORLD_SIZE"), "an integer >= 1",
                          fix="launch with torchrun, which sets it") from None
    if world <= 1:
        return False
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    logger.info("joined a %s process group: rank %d of %d", backend, rank(), world_size())
    return True


def shutdown() -> None:
    """Destroy the default process group (after a barrier, so no rank leaves early)."""
    if is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


def shard_batches(batches: Sequence[Any], rank_: int | None = None,
                  world: int | None = None) -> list:
    """This rank's share of the calibration batches: contiguous, in order, sizes differing
    by at most one (the first ``len % world`` ranks get one more).

    rank_/world: default to this process's rank and the group's size (the whole list in one
    process).  Concatenating the shards of ranks ``0..world-1`` gives ``batches`` back.
    Raises :class:`ConfigError` when there are fewer batches than ranks.
    """
    if isinstance(batches, (str, bytes)) or not hasattr(batches, "__iter__"):
        raise ConfigError("batches", type(batches).__name__, "a list of calibration batches",
                          fix="pass a list (or another sequence) of input batches")
    items = list(batches)
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ConfigError("world", world, "an integer >= 1", fix="pass the number of ranks")
    if isinstance(rank_, bool) or not isinstance(rank_, int) or not 0 <= rank_ < world:
        raise ConfigError("rank", rank_, f"an integer in [0, {world - 1}]",
                          fix="pass this process's rank (torch.distributed.get_rank())")
    if len(items) < world:
        raise ConfigError("batches", f"{len(items)} batch(es)", f"at least one per rank "
                          f"({world} ranks)", fix="pass more calibration batches or launch "
                          "fewer processes")
    base, extra = divmod(len(items), world)
    start = rank_ * base + min(rank_, extra)
    return items[start:start + base + (1 if rank_ < extra else 0)]


# ---------------------------------------------------------------------- collectives


def _device() -> torch.device:
    """Where the group's collectives run: the current CUDA device for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """Reduce ``tensor`` in place across ranks with ``op`` (``"sum"``, ``"min"``, ``"max"``)
    and return it; every rank ends with the same values.  No-op in one process."""
    if op not in _OPS:
        raise ConfigError("op", op, f"one of {sorted(_OPS)}")
    if not is_distributed():
        return tensor
    device = _device()
    buf = tensor if tensor.device == device and tensor.is_contiguous() else \
        tensor.to(device).contiguous()
    dist.all_reduce(buf, op=getattr(dist.ReduceOp, _OPS[op]))
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int) -> torch.Tensor:
    """Overwrite ``tensor`` (same shape and dtype on every rank) with rank ``src``'s values,
    in place, and return it.  No-op in one process."""
    if not is_distributed():
        return tensor
    device = _device()
    buf = tensor.detach()
    if buf.device != device or not buf.is_contiguous():
        buf = buf.to(device).contiguous()
    dist.broadcast(buf, src)
    if buf.data_ptr() != tensor.data_ptr():
        with torch.no_grad():
            tensor.copy_(buf)
    return tensor


def _encode(obj: Any) -> torch.Tensor:
    data = json.dumps(obj, sort_keys=True, allow_nan=True).encode()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode(t: torch.Tensor) -> Any:
    return json.loads(bytes(t.cpu().numpy().tobytes()).decode())


def all_gather_json(obj: Any) -> list:
    """Every rank's ``obj`` (anything JSON can hold), in rank order; ``[obj]`` alone."""
    if not is_distributed():
        return [obj]
    device = _device()
    data = _encode(obj).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64, device=device))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    parts = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(parts, padded)
    return [_decode(p[:int(n)]) for p, n in zip(parts, sizes)]


def broadcast_json(obj: Any, src: int) -> Any:
    """Rank ``src``'s ``obj`` (JSON-able) on every rank; ``obj`` itself alone."""
    if not is_distributed():
        return obj
    device = _device()
    data = _encode(obj).to(device) if rank() == src else None
    size = torch.tensor([0 if data is None else data.numel()], dtype=torch.int64,
                        device=device)
    dist.broadcast(size, src)
    buf = data if data is not None else torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src)
    return _decode(buf)
