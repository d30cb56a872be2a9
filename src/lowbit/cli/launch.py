"""The ``lowbit`` command under ``torchrun``: join the process group, leave it at the end.

``torchrun --nproc_per_node N -m lowbit quantize ...`` starts N copies of the command with
``WORLD_SIZE``/``RANK`` in their environment.  Each joins one process group (gloo: the
command runs its models on the CPU), calibrates on its share of the batches, and rank 0
alone prints and writes the outputs.  Only ``quantize`` is spread over ranks; the other
subcommands refuse to run under more than one process.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

#: Subcommands that work across ranks.
DISTRIBUTED_COMMANDS = ("quantize",)


def launched_ranks() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``, 1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@contextlib.contextmanager
def process_group(command: str) -> Iterator[None]:
    """Join the launcher's process group for ``command``, and leave it afterwards (after a
    barrier when the command succeeded, so no rank exits while another still needs it)."""
    if launched_ranks() <= 1:
        yield
        return
    from lowbit.cli.flags import FlagError

    if command not in DISTRIBUTED_COMMANDS:
        raise FlagError("command", command, f"one of {DISTRIBUTED_COMMANDS} under torchrun "
                        f"(WORLD_SIZE={launched_ranks()})",
                        fix=f"run `lowbit {command}` as one process")
    import torch.distributed as dist

    from lowbit.distributed import init_from_env, shutdown

    created = init_from_env("cpu")  # the command's models run on the CPU: gloo
    try:
        yield
    except BaseException:
        if created:
            dist.destroy_process_group()
        raise
    if created:
        shutdown()
