"""`import lowbit` is free of side effects (DESIGN.md, "Layers").

In a fresh interpreter: record torch's global state, `import lowbit`, record it again. Importing
lowbit must not initialise CUDA, change any global torch setting, draw from the random number
generator, configure logging, print, or import the optional dependencies (those are imported
only by the features that need them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

OPTIONAL_MODULES = ("transformers", "onnx", "onnxruntime", "onnxscript", "sklearn", "matplotlib")

PROBE = r"""
import contextlib, hashlib, io, json, logging, sys, warnings
warnings.simplefilter("ignore")  # some getters below are deprecated in newer torch; not our concern
import torch

OPTIONAL = %(optional)r

def state():
    return {
        "torch.cuda.is_initialized()": torch.cuda.is_initialized(),
        "torch.get_default_dtype()": str(torch.get_default_dtype()),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.is_inference_mode_enabled()": torch.is_inference_mode_enabled(),
        "torch.is_anomaly_enabled()": torch.is_anomaly_enabled(),
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.is_deterministic_algorithms_warn_only_enabled()":
            torch.is_deterministic_algorithms_warn_only_enabled(),
        "torch.get_num_threads()": torch.get_num_threads(),
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark,
        "torch.backends.cudnn.deterministic": torch.backends.cudnn.deterministic,
        "torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torch.backends.mkldnn.enabled": torch.backends.mkldnn.enabled,
        "torch.random.get_rng_state()": hashlib.sha256(
            torch.random.get_rng_state().numpy().tobytes()).hexdigest(),
        "logging root handlers": [type(h).__name__ for h in logging.getLogger().handlers],
        "logging root level": logging.getLogger().level,
        "optional modules imported": sorted(m for m in OPTIONAL if m in sys.modules),
    }

before = state()
stdout = io.StringIO()
with contextlib.redirect_stdout(stdout):
    import lowbit
after = state()
print("@@RESULT@@" + json.dumps({
    "before": before, "after": after, "stdout": stdout.getvalue(),
    "file": lowbit.__file__,
    "optional": sorted(m for m in sys.modules if m.split(".")[0] in OPTIONAL),
}))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE % {"optional": OPTIONAL_MODULES}],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, f"`import lowbit` failed in a fresh interpreter:\n{proc.stderr}"
    line = next(line for line in proc.stdout.splitlines() if line.startswith("@@RESULT@@"))
    return json.loads(line[len("@@RESULT@@"):])


def test_the_probe_imported_this_checkout(probe):
    assert Path(probe["file"]).resolve().is_relative_to(SRC.resolve()), probe["file"]


def test_import_does_not_initialise_cuda(probe):
    assert probe["before"]["torch.cuda.is_initialized()"] is False
    assert probe["after"]["torch.cuda.is_initialized()"] is False


@pytest.mark.parametrize("setting", [
    "torch.get_default_dtype()",
    "torch.is_grad_enabled()",
    "torch.is_inference_mode_enabled()",
    "torch.is_anomaly_enabled()",
    "torch.are_deterministic_algorithms_enabled()",
    "torch.is_deterministic_algorithms_warn_only_enabled()",
    "torch.get_num_threads()",
    "torch.get_float32_matmul_precision()",
    "torch.backends.cudnn.benchmark",
    "torch.backends.cudnn.deterministic",
    "torch.backends.cudnn.allow_tf32",
    "torch.backends.cuda.matmul.allow_tf32",
    "torch.backends.mkldnn.enabled",
    "torch.random.get_rng_state()",
    "logging root handlers",
    "logging root level",
])
def test_import_leaves_global_state_unchanged(probe, setting):
    assert probe["after"][setting] == probe["before"][setting], (
        f"`import lowbit` changed {setting}: {probe['before'][setting]!r} -> "
        f"{probe['after'][setting]!r}; set it inside the function that needs it, and restore it"
    )


def test_import_does_not_load_optional_dependencies(probe):
    assert probe["before"]["optional modules imported"] == [], "torch itself imported one"
    assert probe["optional"] == [], (
        f"`import lowbit` imported {probe['optional']}; import optional dependencies inside the "
        f"functions that use them"
    )


def test_import_prints_nothing(probe):
    assert probe["stdout"] == ""
