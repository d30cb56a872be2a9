"""The model flow: select layers, prepare, calibrate, QAT, convert, size, save/load."""

from .api import quantize_model
from .convert import convert, tune_kernels
from .prepare import calibrate, lowbit_state, prepare, quant_modules, to_float
from .qat import distill_loss, qat_finetune
from .select import RoleMap, find_roles, select_layers
from .size import estimate_model_size
