"""lowbit: quantize PyTorch models — ranges from a little data, QAT, integer kernels, ONNX.

This module is the curated public API; everything here is documented and tested.
Heavy optional packages (transformers, onnx, scikit-learn, matplotlib) are never
imported here.
"""

from ._version import __version__
from .config import LayerConfig, QuantSpec, parse_method
from .errors import (CheckpointError, ConfigError, ExportError, InputError,
                     KernelUnavailableError, LowbitError, StateError)
from .export import ExportResult, export_onnx, onnx_info, validate_onnx
from . import distributed  # lowbit.distributed.is_main(), .local(), ... (torch.distributed)
from .distributed import shard_batches
from .compat import (PTQPipeline, QuantizationConfig, calculate_quantization_error, dequantize,
                     quantize_symmetric, quantize_weight_per_channel, recipe_from_flags)
from .config import FQ_IMPLS, KERNEL_PATHS
from .model import (calibrate, convert, estimate_model_size, find_roles, lowbit_state, prepare,
                    qat_finetune, to_float, tune_kernels)
from .model.checkpoint import load, save
from .model.compile import CompiledModel, compile
from .nn import (QuantConv1d, QuantConv2d, QuantEmbedding, QuantizedConv1d, QuantizedConv2d,
                 QuantizedEmbedding, QuantizedLinear, QuantLinear, TensorQuantizer,
                 set_kernel_path)
from .observers import Observer, make_observer
from .presets import PRESETS, describe_presets, preset
from .primitives.affine import choose_qparams, fake_quantize, qparams_from_range, quantize
from .primitives.complex import (ComplexQParams, choose_complex_qparams, dequantize_complex,
                                 fake_quantize_complex, quantize_complex)
from .primitives.fixed_point import fake_fixed, from_fixed, to_fixed
from .primitives.metrics import cosine, mse, sat_ratio, snr_db, sqnr_db
from .primitives.packing import pack, pack_codes, unpack, unpack_codes
from .recipe import AnyModule, ByName, ByRole, ByType, Recipe, Rule, load_recipe
from .records import LayerRecord
from .report import Analysis, ComparisonResult, analyze, compare, write_report
from .workflow import quantize_model
from .algorithms import (ALGORITHMS, AWQ, CLE, GPTQ, AdaQuant, AdaRound, BiasCorrection,
                         BNAffine, BNFold, BNReestimate, SmoothQuant)
from .types import (Granularity, PerChannel, PerGroup, PerTensor, PerToken, QParams, QType,
                    Scheme, int2, int3, int4, int5, int6, int7, int8, int9, int10, int11, int12,
                    int13, int14, int15, int16, qtype_from_name, uint2, uint3, uint4, uint5, uint6,
                    uint7, uint8, uint9, uint10, uint11, uint12, uint13, uint14, uint15, uint16)
from . import search  # the package is callable: lowbit.search(model, candidates, budget, ...)
from .search import Budget, SearchResult
