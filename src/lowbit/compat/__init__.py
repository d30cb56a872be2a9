"""Front ends other tools' users know, as thin layers over lowbit's core.

Nothing in the core imports this package; it translates once, at the edge:

* :mod:`~lowbit.compat.seed001` — ``quantize_symmetric``, ``quantize_weight_per_channel``,
  ``dequantize``, ``calculate_quantization_error``;
* :mod:`~lowbit.compat.modes` — ``QuantizationConfig`` (``ptq_int8`` ... ``qat_int4``);
* :mod:`~lowbit.compat.pipeline` — ``PTQPipeline``;
* :mod:`~lowbit.compat.flags` — role flags (``recipe_from_flags``), ``--quant_backend``,
  old spellings such as ``set_kernel_backend``;
* :mod:`~lowbit.compat.checkpoint_v0` — loading format-v0 checkpoints (registered on import).
"""

from . import checkpoint_v0  # noqa: F401  (registers the v0 -> v1 checkpoint migration)
from .flags import (QUANT_BACKENDS, QUANT_MODES, fq_impl_of, migrate_flags, recipe_from_flags,
                    set_kernel_backend)
from .modes import QC_MODES, QuantizationConfig
from .pipeline import PTQPipeline
from .seed001 import (calculate_quantization_error, dequantize, quantize_symmetric,
                      quantize_weight_per_channel)

__all__ = [
    "QUANT_BACKENDS", "QUANT_MODES", "fq_impl_of", "migrate_flags", "recipe_from_flags",
    "set_kernel_backend", "QC_MODES", "QuantizationConfig", "PTQPipeline",
    "calculate_quantization_error", "dequantize", "quantize_symmetric",
    "quantize_weight_per_channel",
]
