"""``lowbit`` under torchrun: ``python -m lowbit`` runs the command, ``torchrun
--nproc_per_node 2 -m lowbit quantize ...`` writes (from rank 0) the same checkpoint one
process writes, and the subcommands that do not work across ranks refuse to start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit._version import __version__
from lowbit.cli import main as cli
from lowbit.runtime import one_thread

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
if str(HERE) not in sys.path:  # for fixtures_models
    sys.path.insert(0, str(HERE))


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if Path("/sys/class/net/lo").exists():  # Linux: gloo on the loopback interface only
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N -m lowbit ARGS`` on the loopback address."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "lowbit", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)


def _weights(folder: Path) -> bytes:
    (path,) = folder.glob("weights-*.safetensors")
    return path.read_bytes()


def test_python_dash_m_lowbit_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "lowbit", "--version"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"lowbit {__version__}"


def test_torchrun_quantize_writes_what_one_process_writes(tmp_path, capsys):
    """KL (entropy) ranges of a tiny MLP from 3 batches split 2 + 1 over two ranks: the
    histograms are reduced exactly, so the checkpoints are byte for byte the same."""
    flags = ["quantize", "--model", "fixtures_models:tiny_mlp", "--quantize_all",
             "--quant_bits", "8", "--calib_method", "kl", "--report", "none"]
    with one_thread():  # as the ranks run (torchrun gives each one thread)
        assert cli.main([*flags, "--out_dir", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    done = torchrun([*flags, "--out_dir", str(tmp_path / "two")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1, "rank 0 alone prints and writes"
    for kind in ("calibrated", "quantized"):
        assert _weights(tmp_path / "two" / kind) == _weights(tmp_path / "one" / kind), kind
        manifest = (tmp_path / "two" / kind / "manifest.json").read_text()
        assert manifest == (tmp_path / "one" / kind / "manifest.json").read_text(), kind
    assert (tmp_path / "two" / "records.json").read_text() == \
        (tmp_path / "one" / "records.json").read_text()


@pytest.mark.slow
def test_torchrun_quantizes_the_readme_example(tmp_path):
    """The README's ``lowbit quantize --model digits --recipe w8a8-static`` under torchrun."""
    flags = ["quantize", "--model", "digits", "--recipe", "w8a8-static", "--report", "none"]
    done = torchrun([*flags, "--out_dir", str(tmp_path / "two")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "lowbit", *flags, "--out_dir",
                          str(tmp_path / "one")], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _weights(tmp_path / "two" / "quantized") == _weights(tmp_path / "one" / "quantized")


def test_other_subcommands_refuse_to_run_under_several_processes(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    status = cli.main(["eval", "--ckpt", str(tmp_path), "--model", "digits",
                       "--out_dir", str(tmp_path / "e")])
    assert status == 2
    err = capsys.readouterr().err
    assert "command='eval'" in err and "quantize" in err and "Fix:" in err
