"""Observer states reduced across ranks, so every rank ends calibration with the same ranges.

Each rank calibrates on its own shard; :func:`reduce_observers` then makes every observer
hold the state one observer would hold after seeing all the shards (what
:meth:`~lowbit.observers.Observer.merge` gives), in three steps:

1. **Agree** (one small JSON gather): each rank sends, per observer, its name, spec, number
   of values seen, the shapes of its state entries and the exponents of its data-dependent
   grids.  Ranks must list the same observers; ranks that saw data must agree on the block
   layout.  The agreed grid is the widest one seen (``max`` of the exponents).
2. **Align**: each rank moves its histograms onto the agreed power-of-two grid.  Merging
   bins of a power-of-two grid is exact, so counts stay exact integers.
3. **Reduce**: every state entry goes into one flat buffer per (operation, dtype) — min/max
   by MIN/MAX, counts and moments by SUM, the moving average as a weighted SUM divided by
   the summed weights — at most eight all-reduces for all observers of a model.  A rank that
   saw nothing contributes the operation's neutral element.

The result is bit-exact with one process on the union for min/max and histograms (so for the
percentile, entropy and ``auto`` ranges and the per-tensor MSE search); sums of floats (the
blocked MSE tables, moving averages) match up to the order of additions.  Observers with no
reduction plan (a user's registered observer) are combined by gathering their states
(safetensors bytes, no pickle) and merging them in rank order.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
from torch import nn

from ..errors import StateError
from ..nn.quantizer import TensorQuantizer
from ..observers.base import Observer
from . import comm

logger = logging.getLogger(__name__)

_NEUTRAL = {"sum": 0, "min": float("inf"), "max": float("-inf")}


def calibration_quantizers(model: nn.Module) -> list[tuple[str, TensorQuantizer]]:
    """``(module name, quantizer)`` of every activation quantizer that is observing, in
    module order.  Weight quantizers are left out: each rank holds the same weights, and
    freezing observes them afresh."""
    weight_q = {id(getattr(m, "weight_quantizer", None)) for m in model.modules()}
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, TensorQuantizer) and module.observing
            and id(module) not in weight_q and module.observer is not None]


def calibration_observers(model: nn.Module) -> list[tuple[str, Observer]]:
    """``(module name, observer)`` of :func:`calibration_quantizers`."""
    return [(name, q.observer) for name, q in calibration_quantizers(model)]


def reduce_model_observers(model: nn.Module) -> int:
    """Reduce the calibration observers of ``model`` across ranks (see the module doc), and
    sum how many tensors each quantizer observed; returns how many observers were reduced
    (0 in one process)."""
    if not comm.is_distributed():
        return 0
    quantizers = calibration_quantizers(model)
    if quantizers:
        counts = torch.tensor([q._n_observed for _, q in quantizers], dtype=torch.int64)
        comm.all_reduce_(counts, "sum")
        for (_, q), n in zip(quantizers, counts.tolist()):
            q._n_observed = n
    return reduce_observers([(name, q.observer) for name, q in quantizers])


def reduce_observers(observers: Sequence[tuple[str, Observer]]) -> int:
    """Make every observer of ``observers`` (``(name, observer)``, the same list on every
    rank) hold the state of all ranks' observations combined.  No-op in one process."""
    if not comm.is_distributed() or not observers:
        return 0
    metas = comm.all_gather_json([_meta(name, obs) for name, obs in observers])
    names = [m["name"] for m in metas[0]]
    for r, rank_metas in enumerate(metas):
        if [m["name"] for m in rank_metas] != names:
            raise StateError(f"rank {r} calibrates other layers than rank 0 "
                             f"({len(rank_metas)} vs {len(names)} observers); every rank must "
                             "prepare the same model with the same recipe")
    planned, gathered = [], []
    for i, (name, obs) in enumerate(observers):
        per_rank = [rank_metas[i] for rank_metas in metas]
        donors = [m for m in per_rank if m["n_seen"] > 0]
        if not donors:
            continue
        _check_agree(name, donors)
        if per_rank[0]["ops"] is None:
            gathered.append(obs)
            continue
        grid: dict[str, int] = {}
        for m in donors:
            for key, exp in m["grid"].items():
                grid[key] = max(grid.get(key, exp), exp)
        if obs.n_seen:
            obs.align_grid(grid)
        planned.append((obs, donors[0]))
    _reduce_planned(planned)
    for obs in gathered:
        _reduce_by_merge(obs)
    logger.info("reduced %d observer(s) across %d ranks", len(planned) + len(gathered),
                comm.world_size())
    return len(planned) + len(gathered)


def _meta(name: str, obs: Observer) -> dict:
    state = obs.state_dict()
    ops = obs.reduce_ops()
    return {"name": name, "spec": obs.spec.to_dict(), "n_seen": int(obs.n_seen),
            "ops": ops, "grid": obs.reduce_grid(),
            "shapes": {k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
                       for k, v in state.items()},
            "same": {k: v.tolist() for k, v in state.items()
                     if ops is not None and k not in ops}}


def _check_agree(name: str, donors: list[dict]) -> None:
    """Ranks that saw data must agree on the spec, the state's shapes and the block layout
    (up to singleton dimensions, as :meth:`Observer.merge` allows)."""
    first = donors[0]

    def shapes(m):
        return {k: v for k, v in m["shapes"].items() if k not in ("stat_shape", "block_size")}

    for m in donors[1:]:
        layout = _squeeze(m["same"].get("stat_shape"))
        if m["spec"] != first["spec"] or shapes(m) != shapes(first) \
                or layout != _squeeze(first["same"].get("stat_shape")):
            raise StateError(f"{name}: the ranks' observers differ in spec or block layout "
                             f"({m['spec']}, {m['shapes']} vs {first['spec']}, "
                             f"{first['shapes']}); feed every rank tensors of the same layout")


def _squeeze(shape) -> list | None:
    return None if shape is None else [n for n in shape if n != 1]


def _local_entries(obs: Observer, ref: dict) -> dict[str, torch.Tensor]:
    """This rank's state entries, or the neutral elements of the reference layout when the
    observer saw nothing here."""
    ops = obs.reduce_ops()
    if obs.n_seen:
        state = obs.state_dict()
        return {k: state[k] for k in ops}
    out = {}
    for key, op in ops.items():
        shape, dtype = ref["shapes"][key]
        dtype = getattr(torch, dtype)
        kind = op.split(":")[0]
        if kind == "mean" or kind == "sum":
            value = 0
        elif dtype.is_floating_point:
            value = _NEUTRAL[kind]
        else:
            info = torch.iinfo(dtype)
            value = info.max if kind == "min" else info.min
        out[key] = torch.full(shape, value, dtype=dtype)
    return out


def _reduce_planned(planned: list[tuple[Observer, dict]]) -> None:
    """Step 3 of the module doc for every observer with a reduction plan at once."""
    if not planned:
        return
    # (op, dtype) -> list of (observer index, key, flat tensor)
    buckets: dict[tuple[str, torch.dtype], list[tuple[int, str, torch.Tensor]]] = {}
    for i, (obs, ref) in enumerate(planned):
        local = _local_entries(obs, ref)
        for key, op in obs.reduce_ops().items():
            value = local[key]
            if op.startswith("mean:"):
                weight = float(local[op.split(":", 1)[1]])
                value, op = value.double() * weight, "sum"
            dtype = torch.float64 if value.is_floating_point() else torch.int64
            buckets.setdefault((op, dtype), []).append((i, key, value.reshape(-1).to(dtype)))
    reduced: list[dict[str, torch.Tensor]] = [{} for _ in planned]
    for (op, dtype), items in sorted(buckets.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        flat = torch.cat([t.cpu() for _, _, t in items])
        comm.all_reduce_(flat, op)
        start = 0
        for i, key, t in items:
            reduced[i][key] = flat[start:start + t.numel()]
            start += t.numel()
    for i, (obs, ref) in enumerate(planned):
        state = {k: torch.tensor(v, dtype=getattr(torch, ref["shapes"][k][1]))
                 for k, v in ref["same"].items()}
        for key, op in obs.reduce_ops().items():
            shape, dtype = ref["shapes"][key]
            value = reduced[i][key]
            if op.startswith("mean:"):
                total = float(reduced[i][op.split(":", 1)[1]])
                value = value / total if total else value
            state[key] = value.reshape(shape).to(getattr(torch, dtype))
        obs.load_state_dict(state)


def _reduce_by_merge(obs: Observer) -> None:
    """Gather every rank's state of ``obs`` (safetensors bytes) and merge them in rank order."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    blob = list(st_save({k: v.contiguous() for k, v in obs.state_dict().items()}))
    blobs = comm.all_gather_json(blob)
    merged = None
    for data in blobs:
        part = copy.deepcopy(obs)
        part.load_state_dict(st_load(bytes(data)))
        if merged is None:
            merged = part
        else:
            merged.merge(part)
    obs.load_state_dict(merged.state_dict())
