"""Save and load prepared, calibrated or converted models: safetensors plus a JSON manifest.

A checkpoint is a DIRECTORY holding ``manifest.json`` and ``weights-<sha256[:16]>.safetensors``.
Loading never unpickles: the manifest is JSON, the tensors safetensors.

Manifest, format v3::

    format          "lowbit-checkpoint"
    format_version  3 (older versions are migrated on load: lowbit.model.migrations)
    lowbit_version  the lowbit that wrote it
    recipe          Recipe.to_dict()
    fq_impl         "reference" | "fused" (how fake quantization computes)
    stage           "prepared" | "calibrated" | "converted"
    layers          {name: {"module_type", "kind": "qat" | "quantized", "config": LayerConfig}}
    records         [LayerRecord.to_dict(), ...]
    roles           the RoleMap's fields, or null
    observers       {quantizer path: {"method", "n_observed", "observing"}}
    algorithms      [algorithm config dicts] applied block by block (absent or [] for none)
    tied            {state_dict key: stored key}: a key whose tensor IS another key's (a tied
                    weight, the shared codes of tied layers: lowbit.model.ties) is stored
                    once; loading gives it the stored tensor and re-ties the layers' codes
    weights_file, weights_sha256, weights_bytes

The weights file holds the model's ``state_dict`` and, under ``__observer__/<quantizer
path>/<key>``, the state tensors of every quantizer's observer, so that calibration can
resume after loading (keep running forwards, then ``model.end_calibration()``).

Saving is atomic: the weights go to a temporary file in the directory (fsync, ``os.replace``),
then the manifest likewise; replacing the manifest is the commit point.  Only then are the
files of earlier saves deleted (only files lowbit provably wrote), so a crash at any point
leaves the previous checkpoint loadable.  Saves to one directory are serialized by a lock file
and a load sees the old or the new checkpoint, whole (:mod:`lowbit.model.checkpoint_lock`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..config import LayerConfig
from ..errors import CheckpointError, ConfigError, LowbitError, StateError
from ..nn.quantized import QuantizedModule
from ..nn.quantizer import TensorQuantizer
from ..nn.tables import QAT_MODULES, QUANTIZED_MODULES
from ..observers import make_observer
from ..recipe import Recipe
from ..records import LayerRecord
from .checkpoint_files import MANIFEST, read_checkpoint, write_checkpoint
from .migrations import FORMAT, FORMAT_VERSION
from .prepare import STATE_ATTR, _set_submodule, attach, lowbit_state, quant_modules
from .select import RoleMap
from .structure import replay_structure
from .ties import share_converted, tied_groups

logger = logging.getLogger(__name__)

OBSERVER_PREFIX = "__observer__/"
_QUANTIZER_BUFFERS = ("scale", "zero_point", "block_size")  # shapes adopted on load
_SHOW = 5  # keys named in a mismatch message

# ---------------------------------------------------------------------------- save


def _stage(model: nn.Module) -> str:
    state = lowbit_state(model)
    return "converted" if state.converted else "calibrated" if state.calibrated else "prepared"


def _layers(model: nn.Module) -> dict[str, dict]:
    """Every lowbit module of ``model``: its type, kind and config."""
    layers = {name: {"module_type": type(m).__name__, "kind": "qat",
                     "config": m.config.to_dict()} for name, m in quant_modules(model)}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedModule):
            config = LayerConfig(module.weight_spec, module.act_spec)
            layers[name] = {"module_type": type(module).__name__, "kind": "quantized",
                            "config": config.to_dict()}
    return layers


def _tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict],
                                        dict[str, str]]:
    """The state_dict plus observer states (CPU, contiguous, no shared storage), and the
    ``tied`` map: a key whose tensor is the very tensor of an earlier key (a tied weight, a
    tied layer's codes) is not stored again but mapped to that key."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    first: dict[tuple, str] = {}
    tied: dict[str, str] = {}

    def put(key: str, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state_dict entry {key!r} is a {type(value).__name__}, not a "
                                  "tensor; checkpoints hold tensors only (safetensors). Fix: "
                                  "keep module extra state out of state_dict or store it as "
                                  "a buffer")
        same = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                value.stride(), value.dtype, value.device)
        if value.numel() and same in first:  # one tensor under two names: stored once
            tied[key] = first[same]
            return
        if value.numel():
            first[same] = key
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage().data_ptr()
        if t.numel() and storage in seen:  # tied or viewed tensors: safetensors wants them apart
            t = t.clone()
            storage = t.untyped_storage().data_ptr()
        if t.numel():
            seen.add(storage)
        out[key] = t

    for key, value in model.state_dict().items():
        put(key, value)
    observers = {}
    for path, module in model.named_modules():
        if isinstance(module, TensorQuantizer) and module.observer is not None:
            for key, value in module.observer.state_dict().items():
                put(f"{OBSERVER_PREFIX}{path}/{key}", value)
            observers[path] = {"method": module.spec.method, "n_observed": module._n_observed,
                               "observing": bool(module.observing)}
    return out, observers, tied


def _roles_dict(roles: RoleMap | None) -> dict | None:
    if roles is None:
        return None
    return {"roles": roles.roles, "order": roles.order, "source": roles.source,
            "never_executed": roles.never_executed, "info": roles.info}


def _directory(path: Any) -> Path:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ConfigError("path", path, "a checkpoint directory path (str or os.PathLike)",
                          fix="pass e.g. 'ckpt/'")
    return Path(path)


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a prepared, calibrated or converted ``model`` into the directory ``path``.

    Writes ``weights-<sha256[:16]>.safetensors`` and ``manifest.json`` atomically (see the
    module docstring), under the directory's lock, and removes the files of earlier saves
    (only files lowbit wrote).  Returns the directory.  Raises :class:`StateError` for a
    model lowbit never prepared and :class:`CheckpointError` when ``path`` is a file or
    cannot be written (read-only, disk full); the previous checkpoint then stays loadable.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module prepared by lowbit",
                          fix="pass the model returned by lowbit.prepare or quantize_model")
    state = lowbit_state(model)
    directory = _directory(path)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: is a file, but a checkpoint is a directory. "
                              "Fix: pass a directory path (it is created if missing)")
    tensors, observers, tied = _tensors(model)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "lowbit_version": __version__, "recipe": state.recipe.to_dict(),
                "fq_impl": state.fq_impl, "stage": _stage(model), "layers": _layers(model),
                "records": [r.to_dict() for r in state.records],
                "roles": _roles_dict(state.roles), "observers": observers,
                "algorithms": list(getattr(state, "algorithms", [])), "tied": tied}
    write_checkpoint(directory, tensors, manifest)
    logger.info("saved %s (%s stage, %d layer(s)) to %s", type(model).__name__,
                manifest["stage"], len(manifest["layers"]), directory)
    return directory

# ---------------------------------------------------------------------------- rebuild


def _configs(manifest: dict, model: nn.Module, file: Path) -> dict[str, LayerConfig]:
    """Each manifest layer's config, checked against the float model's module there."""
    configs = {}
    for name, entry in manifest["layers"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        qat_cls = QAT_MODULES.get(type(module))
        if qat_cls is None:
            found = "no module" if module is None else f"a {type(module).__name__}"
            raise CheckpointError(f"{file}: layer {name!r} named in the manifest is not found in "
                                  f"the model ({found} there, need a float "
                                  f"{entry.get('module_type')}'s twin). Fix: load into a fresh "
                                  "instance of the architecture that was saved")
        cls = qat_cls if entry["kind"] == "qat" else QUANTIZED_MODULES.get(qat_cls)
        saved_type = entry.get("module_type")
        if cls is None or (saved_type is not None and saved_type != cls.__name__):
            raise CheckpointError(f"{file}: layer {name!r} was saved as a {saved_type} but the "
                                  f"model's {type(module).__name__} there becomes a "
                                  f"{getattr(cls, '__name__', None)}. Fix: load into a fresh "
                                  "instance of the architecture that was saved")
        try:
            configs[name] = LayerConfig.from_dict(entry["config"])
        except ConfigError as exc:
            raise CheckpointError(f"{file}: layers[{name!r}].config is invalid ({exc})") from None
        if entry["kind"] == "quantized" and configs[name].weight is None:
            raise CheckpointError(f"{file}: layer {name!r} is 'quantized' without a weight spec. "
                                  "Fix: restore the manifest or save the model again")
    return configs


def _tied(manifest: dict, tensors: dict[str, torch.Tensor], file: Path) -> dict[str, str]:
    """The manifest's ``tied`` map (key -> the stored key holding its tensor), checked."""
    tied = manifest.get("tied") or {}
    bad = [k for k, v in tied.items() if not isinstance(k, str) or v not in tensors]
    if not isinstance(tied, dict) or bad:
        raise CheckpointError(f"{file}: 'tied' maps {bad[:_SHOW] or tied!r} to tensors the "
                              "weights file does not hold. Fix: restore the manifest or save "
                              "the model again")
    return tied


def _roles(data: Any) -> RoleMap | None:
    if not isinstance(data, dict):
        return None
    return RoleMap(dict(data.get("roles", {})), list(data.get("order", [])),
                   str(data.get("source", "registration")), list(data.get("never_executed", [])),
                   str(data.get("info", "")))


def _quantizer_keys(model: nn.Module) -> set[str]:
    """state_dict keys of quantizer buffers, whose shapes a load adopts."""
    return {f"{path}.{key}" for path, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, TensorQuantizer) for key in _QUANTIZER_BUFFERS}  # shared: each name


def _check_state(model: nn.Module, tensors: dict[str, torch.Tensor], file: Path) -> None:
    """Missing/unexpected keys and shape/dtype mismatches, named (a few of each)."""
    expected = model.state_dict()
    adopt = _quantizer_keys(model)
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing key(s) {missing[:_SHOW]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {unexpected[:_SHOW]}")
    wrong = [f"{k}: saved {tuple(tensors[k].shape)} {tensors[k].dtype}, model "
             f"{tuple(v.shape)} {v.dtype}" for k, v in expected.items()
             if k in tensors and k not in adopt
             and (tensors[k].shape != v.shape or tensors[k].dtype != v.dtype)]
    if wrong:
        problems.append(f"{len(wrong)} shape/dtype mismatch(es) {wrong[:_SHOW]}")
    if problems:
        raise CheckpointError(f"{file}: the checkpoint does not match the model: "
                              f"{'; '.join(problems)}. Fix: load into a fresh instance of the "
                              "architecture (and dtype) that was saved")


def _restore_observers(model: nn.Module, manifest: dict, observed: dict[str, torch.Tensor],
                       file: Path) -> None:
    """Rebuild each saved observer on its quantizer so calibration can continue."""
    saved = manifest.get("observers") or {}
    paths = {key[len(OBSERVER_PREFIX):].rsplit("/", 1)[0] for key in observed}
    for path in sorted(set(saved) | paths):
        info = saved.get(path, {})
        try:
            quantizer = model.get_submodule(path)
        except AttributeError:
            quantizer = None
        if not isinstance(quantizer, TensorQuantizer) or path not in saved \
                or info.get("method") != quantizer.spec.method:
            raise CheckpointError(f"{file}: observer state for {path!r} (method "
                                  f"{info.get('method')!r}) has no matching quantizer in the "
                                  "model. Fix: load into the architecture that was saved")
        prefix = f"{OBSERVER_PREFIX}{path}/"
        state = {k[len(prefix):]: v.to(quantizer.zero_point.device)
                 for k, v in observed.items() if k.startswith(prefix)}
        observer = make_observer(quantizer.spec)
        try:
            observer.load_state_dict(state)
        except CheckpointError as exc:
            raise CheckpointError(f"{file}: observer {path!r}: {exc}") from None
        object.__setattr__(quantizer, "_observer", observer)
        quantizer._n_observed = int(info.get("n_observed", 0))
        quantizer.observing = bool(info.get("observing", False))


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model``, a fresh FLOAT instance of the saved
    architecture (its weights are overwritten); returns ``model``, rebuilt in place.

    Layers get the fake-quant or real modules and configs the manifest names (no
    re-selection), the weights and qparams are loaded strictly, observers are restored so
    calibration can resume, and the stage, records and roles come back.  Older formats are
    migrated first.  Raises :class:`CheckpointError` naming the file for a missing, corrupt
    or mismatched checkpoint; after a mismatch the model is half-built, so load into a
    fresh instance again.  :func:`read_checkpoint` gives the migrated manifest itself.
    """
    try:
        return _load(path, model)
    except LowbitError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        # a manifest that passed the field checks but does not hang together
        raise CheckpointError(f"{Path(path) / MANIFEST}: the manifest does not describe a "
                              f"model lowbit can rebuild ({type(exc).__name__}: "
                              f"{str(exc)[:200]}). Fix: restore the manifest or save the model "
                              "again") from None


def _load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module",
                          fix="pass a fresh float instance of the saved architecture")
    if getattr(model, STATE_ATTR, None) is not None:
        raise StateError("lowbit.load needs the FLOAT model, but this one was already prepared "
                         "by lowbit; pass a fresh instance of the architecture")
    directory = _directory(path)
    file = directory / MANIFEST
    manifest, tensors = read_checkpoint(directory)
    weights_file = directory / manifest["weights_file"]
    tied = _tied(manifest, tensors, file)
    tensors.update({key: tensors[source] for key, source in tied.items()})
    groups = tied_groups(model)  # the float model's own ties, by Parameter identity
    configs = _configs(manifest, model, file)
    try:
        recipe = Recipe.from_dict(manifest["recipe"])
        records = [LayerRecord.from_dict(r) for r in manifest["records"]]
    except (ConfigError, TypeError, AssertionError) as exc:
        raise CheckpointError(f"{file}: recipe or records are invalid ({exc}). Fix: restore "
                              "the manifest or save the model again") from None
    observed = {k: v for k, v in tensors.items() if k.startswith(OBSERVER_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(OBSERVER_PREFIX)}
    replay_structure(model, records)  # folded BatchNorms, ReLU6 clips, created biases
    attach(model, configs, recipe, manifest["fq_impl"], [], _roles(manifest.get("roles")))
    state = lowbit_state(model)
    state.records = records  # as saved (attach would re-annotate them)
    state.algorithms = list(manifest.get("algorithms", []))  # layer-wise algorithms applied
    for name, entry in manifest["layers"].items():
        if entry["kind"] == "quantized":
            qat = model.get_submodule(name)
            config = configs[name]
            real = QUANTIZED_MODULES[type(qat)]._empty_like(qat, config.weight, config.act)
            _set_submodule(model, name, real.to(qat.weight.device))
    _check_state(model, weights, weights_file)
    model.load_state_dict(weights, strict=True)
    share_converted(model, groups)  # a tied weight's codes: one object again
    _restore_observers(model, manifest, observed, weights_file)
    state.calibrated = manifest["stage"] in ("calibrated", "converted")
    state.converted = manifest["stage"] == "converted"
    logger.info("loaded %s (%s stage, %d layer(s)) from %s", type(model).__name__,
                manifest["stage"], len(configs), directory)
    return model
