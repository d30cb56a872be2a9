"""Calibration and layer-wise algorithms across ``torch.distributed`` ranks.

Nothing here starts processes: ``torchrun`` or the user's program does.  When a process
group with more than one rank is initialized, :func:`lowbit.calibrate` reduces every
activation observer across ranks on exit, and the layer-wise algorithms all-reduce their
statistics and share each layer's result; in one process everything runs as before.
:func:`shard_batches` splits a calibration list among ranks.
"""

from .comm import (all_gather_json, all_reduce_, backend_for, barrier, broadcast_,
                   broadcast_json, init_from_env, is_distributed, is_initialized, is_main,
                   local, rank, shard_batches, shutdown, world_size)
from .layers import all_reduce_count, owner, owns, run_owned, share_layer
from .observers import (calibration_observers, calibration_quantizers, reduce_model_observers,
                        reduce_observers)

__all__ = ["all_gather_json", "all_reduce_", "all_reduce_count", "backend_for", "barrier",
           "broadcast_", "broadcast_json", "calibration_observers", "calibration_quantizers",
           "init_from_env", "is_distributed", "is_initialized", "is_main", "local", "owner",
           "owns", "rank", "reduce_model_observers", "reduce_observers", "run_owned",
           "shard_batches", "share_layer", "shutdown", "world_size"]
