"""Modules: fake-quant (QAT) modules, real low-bit modules and the float->QAT->real tables."""

from .qat import (QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear, QuantModuleMixin,
                  weight_matrix)
from .quantized import (DEFAULT_WEIGHT_SPEC, QuantizedConv1d, QuantizedConv2d,
                        QuantizedEmbedding, QuantizedLinear, QuantizedModule,
                        set_kernel_path)
from .complex import ComplexPoint, ComplexQuantizer, QuantComplexPoint
from .quantizer import TensorQuantizer, fused_fallback_reason
from .tables import (QAT_MODULES, QUANTIZED_MODULES, qat_class_for, quantized_class_for,
                     register_qat_module, register_quantized_module)

__all__ = [
    "TensorQuantizer", "fused_fallback_reason",
    "ComplexPoint", "ComplexQuantizer", "QuantComplexPoint",
    "QuantModuleMixin", "QuantLinear", "QuantConv1d", "QuantConv2d", "QuantEmbedding",
    "weight_matrix",
    "QuantizedModule", "QuantizedLinear", "QuantizedConv1d", "QuantizedConv2d",
    "QuantizedEmbedding", "DEFAULT_WEIGHT_SPEC", "set_kernel_path",
    "QAT_MODULES", "QUANTIZED_MODULES", "register_qat_module", "register_quantized_module",
    "qat_class_for", "quantized_class_for",
]
