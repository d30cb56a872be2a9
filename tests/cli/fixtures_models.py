"""Shared helpers of the CLI tests, and tiny models for ``--model module:function``.

Test modules put this folder on ``sys.path`` and import from here; ``module:function`` specs
name ``fixtures_models:<function>``. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lowbit.cli.main import main

HERE = Path(__file__).resolve().parent
CALIB_BATCHES = 3


class TinyMLP(nn.Module):
    """proj Linear 8->16, ReLU, block Linear 16->16, ReLU, head Linear 16->4."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.block = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 8) -> (B, 4)."""
        return self.head(torch.relu(self.block(torch.relu(self.proj(x)))))


def _model_and_batches() -> tuple[TinyMLP, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyMLP().eval()
    batches = [torch.randn(4, 8, generator=gen) for _ in range(CALIB_BATCHES)]
    return model, batches


def tiny_mlp():
    """``(model, calib_data)``: the CLI scores it by output cosine to the float model."""
    return _model_and_batches()


def tiny_mlp_scored():
    """``(model, calib_data, eval_fn)`` with ``eval_fn`` = minus the output MSE to float."""
    model, batches = _model_and_batches()
    with torch.no_grad():
        reference = [model(b) for b in batches]

    def eval_fn(candidate: nn.Module) -> float:
        with torch.no_grad():
            return -float(sum(torch.mean((candidate(b) - r) ** 2)
                              for b, r in zip(batches, reference)))

    return model, batches, eval_fn


class TinyBlocks(nn.Module):
    """proj Linear 8->16, two repeated blocks (Linear 16->32, ReLU, Linear 32->16), head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)) for _ in range(2))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def tiny_blocks():
    """``(model, calib_data)`` of a model with repeated blocks (for --algo)."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyBlocks().eval()
    return model, [torch.randn(16, 8, generator=gen) for _ in range(CALIB_BATCHES)]


def not_a_model():
    """Returns neither a model nor ``(model, calib_data)``: the CLI must refuse it."""
    return {"model": "missing"}


# ---------------------------------------------------------------------------- test helpers


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``lowbit *argv`` in-process: ``(exit status, stdout, stderr)``."""
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Status 2 and exactly one ``lowbit: error:`` line on stderr containing ``needles``."""
    assert code == 2, f"an invalid combination exits with status 2, got {code}; stderr: {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"the error is ONE line, got {len(lines)}: {err!r}"
    assert lines[0].startswith("lowbit: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} missing from the error line: {lines[0]!r}"
    assert "Fix:" in lines[0], f"the line says what to do: {lines[0]!r}"
    return lines[0]


def read_json(path: Path):
    """Parse the JSON file at ``path``."""
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """One CPU thread (tiny convs on a shared machine are many times faster so), the hub
    offline, and a digits cache shared by every CLI test module, so the CNN trains once."""
    cache = tmp_path_factory.getbasetemp() / "lowbit-cli-cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWBIT_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.syspath_prepend(str(HERE))
        yield cache
    torch.set_num_threads(threads)


class NoLayers(nn.Module):
    """Only parameter-free ops: nothing for lowbit to quantize."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 8) -> (B, 8)."""
        return torch.tanh(x) * 2


def no_quantizable_layer():
    """``(model, calib_data)`` with no Linear/Conv/Embedding anywhere."""
    return NoLayers().eval(), [torch.randn(4, 8, generator=torch.Generator().manual_seed(0))]


def no_batches():
    """A model with an empty calibration list."""
    return _model_and_batches()[0], []
