"""Shared models for the export tests: small MLPs and (when scikit-learn is there) the digits CNN.

Exports are the slow part (seconds each with PyTorch's dynamo exporter), so every exported file
that more than one test reads is made once per session here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lowbit

if str(Path(__file__).resolve().parent) not in sys.path:  # for export_helpers
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_helpers import TinyMLP  # noqa: E402


@pytest.fixture(scope="session")
def onnx_stack():
    """Skip unless onnx and onnxruntime are installed (the ``onnx`` extra)."""
    pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' extra")
    pytest.importorskip("onnxruntime", reason="validation needs the 'onnx' extra")


@pytest.fixture(scope="session")
def tiny_mlp():
    """A float TinyMLP with seeded weights (eval mode)."""
    torch.manual_seed(0)
    return TinyMLP().eval()


@pytest.fixture(scope="session")
def digits():
    """The trained digits CNN and its data split (skips without scikit-learn)."""
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn")
    from lowbit.zoo import train_digits_cnn

    model, data, _ = train_digits_cnn()
    return model, data


@pytest.fixture(scope="session")
def digits_static(digits):
    """The digits CNN calibrated with ``w8a8-static``, kept fake-quant (not converted)."""
    from lowbit.zoo import calibration_batches

    model, data = digits
    qmodel, _ = lowbit.quantize_model(model, "w8a8-static", list(calibration_batches(data, 4)),
                                      convert=False)
    return qmodel


@pytest.fixture(scope="session")
def digits_static_export(onnx_stack, digits, digits_static, tmp_path_factory):
    """``digits_static`` exported (example batch 16): ``(qmodel, ExportResult)``."""
    from lowbit.export import export_onnx

    _, data = digits
    path = tmp_path_factory.mktemp("digits") / "digits_w8a8_static.onnx"
    return digits_static, export_onnx(digits_static, data.x_test[:16], path)
