"""Format v0 checkpoints (role flags with legacy per-tensor/per-channel scales) -> format v1.

Format v0 (legacy: checkpoints of the ``--q_proj_head`` role flags)
--------------------------------------------------------------------------
A directory holding ``manifest.json``::

    {"format": "lowbit-checkpoint", "format_version": 0,
     "config": {"q_proj_head": bool, "q_block_linear": bool, "quant_bits": int,
                "quant_mode": "dynamic" | "fixed88", "calib_method": str},
     "roles": {layer name: "proj" | "head" | "block"},
     "weights_file": "<file name in the same directory>"}

(``config`` may also hold the newer ``q_proj``/``q_head``/``quantize_all`` flags and
``quant_backend``: ``"python"`` or ``"cpp"``) and a safetensors weights file holding the float
model's ``state_dict`` plus, for each quantized layer ``L`` (a Linear or Conv):

* ``L.a_scale``: 0-d, the per-tensor symmetric scale of ``L``'s input activation;
* ``L.w_scale``: shape ``(out,)``, the per-output-channel symmetric scale of ``L.weight``.

Zero points are 0 (symmetric).  ``v0_to_v1`` maps the flags through
:func:`lowbit.compat.flags.migrate_flags` (``q_proj_head`` -> ``q_proj`` and ``q_head``) and
:func:`lowbit.compat.flags.recipe_from_flags`, gives every layer of ``roles`` its config from that
recipe, and turns the legacy scales into the fake-quant modules' quantizer buffers
(``L.act_quantizer.scale``/``zero_point``/``block_size`` and the same for
``L.weight_quantizer``, with the weight seen as its ``[out, rest]`` matrix).  The result is a
v1 manifest at stage ``"calibrated"`` whose layers are fake-quant (QAT) modules.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..config import LayerConfig, QuantSpec
from ..errors import CheckpointError, ConfigError
from ..model.migrations import FORMAT, Tensors, register_migration
from ..records import LayerRecord
from .flags import migrate_flags, recipe_from_flags

logger = logging.getLogger(__name__)

#: v0 ``quant_backend`` values and the v1 ``backend`` values they became.
_V0_BACKENDS = {"python": "reference", "cpp": "native"}
#: Flags of a v0 ``config`` that :func:`recipe_from_flags` takes.
_V0_FLAG_KEYS = ("q_proj", "q_head", "q_block_linear", "quantize_all", "quant_bits",
                 "quant_mode", "calib_method")
#: Float module type of a legacy quantized layer, by the rank of its weight.
_V0_TYPES = {2: ("Linear", "QuantLinear"), 3: ("Conv1d", "QuantConv1d"),
             4: ("Conv2d", "QuantConv2d")}



def _fail(what: str, fix: str) -> CheckpointError:
    return CheckpointError(f"format v0 manifest: {what}. Fix: {fix}")


def _v0_recipe(config: Any):
    """The v1 recipe and backend of a v0 ``config`` dict."""
    if not isinstance(config, dict):
        raise _fail(f"'config' is {type(config).__name__}, not a dict of flags",
                    "write the legacy flags as {'q_proj_head': true, ...}")
    flags = dict(config)
    backend = _V0_BACKENDS.get(flags.pop("quant_backend", "python"))
    if backend is None:
        raise _fail(f"config.quant_backend={config['quant_backend']!r} is not one of "
                    f"{sorted(_V0_BACKENDS)}", "use 'python' or 'cpp'")
    try:
        flags = migrate_flags(flags)
        unknown = sorted(set(flags) - set(_V0_FLAG_KEYS))
        if unknown:
            raise ConfigError("config", unknown, f"flags among {list(_V0_FLAG_KEYS)}",
                              fix="remove the unknown keys from the legacy manifest")
        recipe = recipe_from_flags(**flags)
    except ConfigError as exc:
        raise _fail(f"its flags are invalid ({exc})", "correct the legacy 'config' flags"
                    ) from None
    return recipe, backend, flags


def _weight_qparams(w_scale: torch.Tensor, spec: QuantSpec, weight: torch.Tensor,
                    name: str) -> Tensors:
    """Weight quantizer buffers for the legacy per-channel ``w_scale`` of ``weight``."""
    rows = weight.shape[0]
    cols = weight.numel() // max(rows, 1)
    if w_scale.reshape(-1).numel() != rows:
        raise _fail(f"'{name}.w_scale' has shape {tuple(w_scale.shape)} but '{name}.weight' has "
                    f"{rows} output channels", "store one weight scale per output channel")
    block = spec.granularity.block_size((rows, cols))
    qshape = (rows // block[0], cols // block[1])
    flat = w_scale.reshape(-1).float()
    if qshape == (rows, 1):
        scale = flat.reshape(rows, 1)
    elif qshape == (1, 1) and bool((flat == flat[0]).all()):
        scale = flat[:1].reshape(1, 1)  # per-tensor (fixed88): one scale shared by all rows
    else:
        raise _fail(f"'{name}.w_scale' (per output channel) cannot serve the weight "
                    f"granularity {spec.granularity.to_dict()}",
                    "use quant_mode 'dynamic' for per-channel weight scales")
    return {"scale": scale.clone(), "zero_point": torch.zeros(qshape, dtype=torch.int32),
            "block_size": torch.tensor(block, dtype=torch.int64)}


def _act_qparams(a_scale: torch.Tensor, name: str) -> Tensors:
    """Activation quantizer buffers for the legacy per-tensor ``a_scale`` (shape-free, 0-d)."""
    if a_scale.numel() != 1:
        raise _fail(f"'{name}.a_scale' has shape {tuple(a_scale.shape)}; a per-tensor "
                    "activation scale has one element", "store a_scale as a 0-d tensor")
    return {"scale": a_scale.reshape(()).float().clone(),
            "zero_point": torch.zeros((), dtype=torch.int32),
            "block_size": torch.zeros(0, dtype=torch.int64)}


def _take(tensors: Tensors, key: str, why: str) -> torch.Tensor:
    if key not in tensors:
        raise _fail(f"tensor '{key}' is missing ({why})",
                    "regenerate the legacy checkpoint with its scales, or re-calibrate")
    return tensors.pop(key)


def v0_to_v1(manifest: dict, tensors: Tensors) -> tuple[dict, Tensors]:
    """Legacy flags, roles and ``a_scale``/``w_scale`` -> a calibrated v1 manifest and tensors."""
    recipe, backend, flags = _v0_recipe(manifest.get("config"))
    roles = manifest.get("roles")
    if not isinstance(roles, dict) or not all(isinstance(k, str) for k in roles):
        raise _fail("'roles' is missing or not a dict of layer name -> role",
                    "write e.g. {'roles': {'proj': 'proj', 'head': 'head'}}")
    out = dict(tensors)
    layers: dict[str, dict] = {}
    records: list[dict] = []
    for name, role in roles.items():
        found = recipe.match(name, None, role)
        config: LayerConfig | None = None if found is None else found[1]
        weight = out.get(f"{name}.weight")
        if weight is None or weight.dim() not in _V0_TYPES:
            raise _fail(f"layer '{name}' (role {role!r}) has no Linear/Conv weight "
                        f"'{name}.weight' in the weights file",
                        "list only Linear/Conv layers under 'roles'")
        float_type, qat_type = _V0_TYPES[weight.dim()]
        if config is None:
            for suffix in ("a_scale", "w_scale"):  # a float layer's stale scales are dropped
                if out.pop(f"{name}.{suffix}", None) is not None:
                    logger.info("v0 migration: dropped %s.%s (layer kept float)", name, suffix)
            records.append(LayerRecord(name, float_type, "float",
                                       f"v0 checkpoint: role {role!r} kept float by its flags "
                                       f"{flags}").to_dict())
            continue
        why = f"layer '{name}' has role {role!r}, which the v0 flags quantize"
        a_scale = _take(out, f"{name}.a_scale", why)
        w_scale = _take(out, f"{name}.w_scale", why)
        for key, value in _act_qparams(a_scale, name).items():
            out[f"{name}.act_quantizer.{key}"] = value
        for key, value in _weight_qparams(w_scale, config.weight, weight, name).items():
            out[f"{name}.weight_quantizer.{key}"] = value
        layers[name] = {"module_type": qat_type, "kind": "qat", "config": config.to_dict()}
        records.append({"name": name, "module_type": float_type, "action": "quantized",
                        "reason": f"v0 checkpoint: role {role!r} quantized by its flags "
                                  f"{flags}, with the legacy a_scale/w_scale",
                        "config": config.to_dict(), "backend": backend, "kernel": None,
                        "kernel_reason": None, "metrics": {}})
    new = {"format": FORMAT, "format_version": 1, "lowbit_version": None,
           "recipe": recipe.to_dict(), "backend": backend, "stage": "calibrated",
           "layers": layers, "records": records, "observers": {},
           "weights_file": manifest.get("weights_file")}
    for key in ("weights_sha256", "weights_bytes"):
        if key in manifest:
            new[key] = manifest[key]
    return new, out


register_migration(0, v0_to_v1)
