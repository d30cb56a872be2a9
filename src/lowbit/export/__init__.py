"""Export: ONNX with QuantizeLinear/DequantizeLinear, validated in ONNX Runtime.

* :func:`export_onnx` — a calibrated fake-quant or converted lowbit model -> ``.onnx`` with
  integer weights + DequantizeLinear, static activations as Q/DQ pairs and dynamic per-token
  activations computed in the graph; lowbit's version and recipe in the metadata.
* :func:`validate_onnx` — run the file in ONNX Runtime and compare it with the PyTorch model.
* :func:`onnx_info` — inputs, outputs, parameters, Q/DQ node counts, opset and metadata.

``onnx`` and ``onnxruntime`` (the ``onnx`` extra) are imported only when these functions run.
"""

from .graph import onnx_info
from .onnx_export import ExportResult, export_onnx
from .validate import validate_onnx

__all__ = ["ExportResult", "export_onnx", "onnx_info", "validate_onnx"]
