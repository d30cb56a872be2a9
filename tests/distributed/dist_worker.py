"""One rank of the 2-process tests: ``python dist_worker.py OUT_DIR`` under the environment
a launcher sets (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT).

Joins a gloo group, computes every case of dist_cases on this rank's shard with the
reductions lowbit does across ranks, and writes ``OUT_DIR/rank{R}.safetensors`` (tensors)
and ``OUT_DIR/rank{R}.json`` (records) for the tests to compare."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dist_cases  # noqa: E402
from lowbit.distributed import is_distributed, local, reduce_observers, run_owned  # noqa: E402


def failing_block(rank: int) -> str:
    """The error each rank raises when rank 1 fails on a layer it owns."""
    def work(i):
        if rank == 1:
            raise ValueError(f"layer {i} failed on purpose")

    layers = [torch.nn.Linear(2, 2) for _ in range(2)]
    try:
        run_owned(layers, work, [None, None])
    except Exception as exc:  # noqa: BLE001 - the test compares the messages
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def mismatched_observers(rank: int) -> str:
    """The error each rank raises when the ranks list different observers."""
    obs = dist_cases.observe_cases(rank, 2)[0][1]
    try:
        reduce_observers([(f"layer{rank}", obs)])
    except Exception as exc:  # noqa: BLE001 - the test compares the messages
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tensors = {}
    observers = dist_cases.observe_cases(rank, world)
    with local():  # alone: nothing crosses, nothing is reduced
        alone = reduce_observers(dist_cases.observe_cases(rank, world))
    count = reduce_observers(observers)  # every case in one reduction, as calibration does
    tensors["counts"] = torch.tensor([alone, count, int(is_distributed())])
    tensors.update({f"obs.{k}": v for k, v in dist_cases.observer_tensors(observers).items()})
    records = {}
    for name in dist_cases.MODEL_CASES:
        state, recs = dist_cases.quantize_case(name, rank, world)
        tensors.update({f"model.{name}.{k}": v for k, v in state.items()})
        records[name] = [r.to_dict() for r in recs]
    records["run_owned_error"] = failing_block(rank)
    records["mismatch_error"] = mismatched_observers(rank)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(records, default=str))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
