"""Layer-wise post-training algorithms, run block by block by one shared runner.

Importing this package registers every built-in algorithm in :data:`ALGORITHMS`.
"""

from ._runner import (LAYERS, BlockContext, BlockInputs, capture_block_inputs, find_blocks,
                      find_layers, run_blocks)
from .base import ALGORITHMS, Algorithm, make_algorithm, parse_algorithms, register_algorithm
from .gptq import GPTQ, gptq_quantize
from .awq import AWQ
from .smoothquant import SmoothQuant
from .bn_fold import BNFold, fold_batchnorm
from .cle import CLE, equalize
from .bias_correction import BiasCorrection
from .bn_reconstruct import BNAffine, BNReestimate, reestimate_batchnorm
from .adaround import AdaRound
from .adaquant import AdaQuant
