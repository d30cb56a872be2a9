"""Spawns the 2-process gloo run once per session (loopback, a free port) for the tests of
this folder, and makes dist_cases importable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
if str(HERE) not in sys.path:  # for dist_cases
    sys.path.insert(0, str(HERE))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict:
    """The environment torchrun would give rank ``rank``, on the loopback address only."""
    env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               OMP_NUM_THREADS="1")
    if Path("/sys/class/net/lo").exists():  # Linux: gloo on the loopback interface only
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def spawn_ranks(argv: list[str], world: int = 2, timeout: float = 600, cwd=None) -> list:
    """Run ``python argv`` as ``world`` ranks; their CompletedProcess-like results."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, *argv], env=rank_env(r, world, port), cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return results


@pytest.fixture(scope="session")
def two_rank_run(tmp_path_factory):
    """``(rank0 tensors, rank1 tensors, rank0 records, rank1 records)`` of dist_worker.py."""
    import json

    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("dist")
    results = spawn_ranks([str(HERE / "dist_worker.py"), str(out)])
    for r, (code, _out, err) in enumerate(results):
        assert code == 0, f"rank {r} failed:\n{err[-3000:]}"
    return (load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors")),
            json.loads((out / "rank0.json").read_text()),
            json.loads((out / "rank1.json").read_text()))
