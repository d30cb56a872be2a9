"""Real low-bit kernels: one registry ``(op, path) -> implementation`` and one dispatcher.

``prepare_linear`` / ``prepare_conv2d`` bind a quantized weight (as ``lowbit.nn`` stores it)
to a plan of kernels per row count; ``reference`` (plain PyTorch) is always there, ``integer``
runs PyTorch's integer kernels and ``dense`` its float GEMM on a dequantized-once weight.
See :mod:`lowbit.kernels.dispatch` for how a kernel is chosen.
"""

from . import dense, int4, int8, int8_engines  # noqa: F401  (register the implementations)
from .act import ACT_MODES, ActQuantizer, quantize_act
from .conv import PreparedConv1d, PreparedConv2d, prepare_conv1d, prepare_conv2d
from ..config import KERNEL_PATHS
from .dispatch import Choice, Plan, plan
from .tuning import TuningCache, environment
from .formats import ActFormat
from .linear import PreparedLinear, prepare_linear
from .registry import PATHS, OP_CLASSES, KernelImpl, find, linear_op, register, registered
from .weights import QuantWeight, quant_weight

__all__ = [
    "ACT_MODES", "ActQuantizer", "quantize_act", "PreparedConv1d", "PreparedConv2d", "prepare_conv1d",
    "prepare_conv2d", "KERNEL_PATHS", "ActFormat", "Choice", "Plan", "plan", "TuningCache", "environment",
    "PreparedLinear", "prepare_linear", "PATHS", "OP_CLASSES", "KernelImpl", "find",
    "linear_op", "register", "registered", "QuantWeight", "quant_weight",
]
