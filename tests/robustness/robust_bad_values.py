"""Bad values and small helpers shared by the bad-input tables (``robust_cases_*.py``).

``BAD`` maps a label to a factory of a bad value (fresh each time: some are mutable); a case
lists the labels that are bad for it. ``OUT["dir"]`` is the output directory of the running
test (outside the watched directory whose files must not change).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(8, 4))


GOOD_X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))

#: label -> factory of a bad value (fresh each time: some are mutable)
BAD = {
    "none": lambda: None,
    "str": lambda: "not a tensor",
    "int": lambda: 3,
    "list": lambda: [1.0, 2.0],
    "dict": lambda: {"x": 1},
    "nan": lambda: torch.tensor([1.0, float("nan")]),
    "inf": lambda: torch.tensor([1.0, float("inf")]),
    "empty": lambda: torch.zeros(0),
    "empty2d": lambda: torch.zeros(0, 8),
    "zero_d": lambda: torch.tensor(1.5),
    "huge": lambda: torch.tensor([-3.4e38, 3.4e38]),
    "meta": lambda: torch.zeros(4, 8, device="meta"),
    "int_tensor": lambda: torch.ones(4, 8, dtype=torch.int64),
    "float_codes": lambda: torch.ones(4, 8),
    "wrong_shape": lambda: torch.randn(3, 5),
    "negative_scale": lambda: torch.tensor(-0.5),
    "nan_scale": lambda: torch.tensor(float("nan")),
    "zero_scale": lambda: 0.0,
    "meta_model": meta_model,
    "float_model": linear_model,
    "unknown_recipe": lambda: "w3a7-nonsense",
    "stdlib_callable": lambda: "os:system",
    "empty_batches": lambda: [],
    "nan_batches": lambda: [torch.full((4, 8), float("nan"))],
    "wrong_shape_batches": lambda: [torch.randn(4, 5)],
    "meta_batches": lambda: [torch.zeros(4, 8, device="meta")],
    "complex_nan": lambda: torch.tensor([1 + 1j, complex(float("nan"), 0.0)]),
}

TENSOR_ARG = ["none", "str", "int", "list", "dict", "nan", "inf", "empty", "empty2d", "huge",
              "meta", "int_tensor"]
MODEL_ARG = ["none", "str", "int", "list", "dict"]


def qp():
    return lowbit.choose_qparams(GOOD_X, lowbit.int8)


def calibrated():
    model, _ = lowbit.quantize_model(linear_model(), "w8a8-static", [GOOD_X], convert=False)
    return model


OUT: dict[str, Path] = {}


def need_onnx() -> bool:
    """Skip the case where the optional onnx packages are absent."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return True


def calibrated_fq() -> nn.Module:
    """A small calibrated fake-quant model (``w8a8-static``), not converted."""
    return calibrated()


def converted() -> nn.Module:
    """A small converted (integer storage) model."""
    model, _ = lowbit.quantize_model(linear_model(), "w8a8", [GOOD_X])
    return model


def complex_qparams() -> lowbit.ComplexQParams:
    """Good ComplexQParams of a small complex tensor."""
    return lowbit.choose_complex_qparams(GOOD_Z, lowbit.int8)


GOOD_Z = torch.complex(GOOD_X, GOOD_X.flip(0))
