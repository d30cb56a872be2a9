"""``export_onnx``: a calibrated fake-quant or converted lowbit model -> an ONNX file with Q/DQ.

The flow::

    deepcopy(model).eval() --probe forward--> input shapes of lowbit layers, output structure
        --rewrite (modules.py)--> plain torch modules whose ops export to Q/DQ
        --torch.onnx.export(dynamo=True)--> ONNX        (TorchScript exporter if that fails,
        --expand markers, fold casts, names, metadata--> file    recorded and logged)

The user's model is never modified.  A model without lowbit layers is exported as it is (float)
with a logged warning, so that a float baseline goes through the same path.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..errors import ConfigError, ExportError, LowbitError, StateError
from ..model.prepare import lowbit_state
from ..records import LayerRecord
from . import graph as onnx_graph
from .modules import REWRITES, rewrite
from .ops import MARKER_DOMAIN, exporting
from .signature import (Flat, check_dynamic_sizes, dynamic_axes_for, flatten_outputs,
                        split_inputs)

logger = logging.getLogger(__name__)

#: opset used when none is asked for: INT4/INT16 and blocked Q/DQ exist from 21 on.
DEFAULT_OPSET = 21
#: QuantizeLinear per axis needs 13; PyTorch's exporters stop at 23.
MIN_OPSET, MAX_OPSET = 13, 23
#: the TorchScript exporter's highest opset (it is used only as a fallback).
TORCHSCRIPT_MAX_OPSET = 20
#: the dynamo exporter's lowest opset (its translations are written for 18; below, its version
#: converter often fails and keeps 18): lower opsets go to the TorchScript exporter, recorded.
DYNAMO_MIN_OPSET = 18
#: Run onnxscript's graph optimizer after the dynamo export?  No: it merges equal initializers
#: across layers (e.g. every all-zero weight zero point), which loses the layer names and makes
#: ONNX Runtime 1.32 fail to load the file with ``session.x64quantprecision``; lowbit folds its
#: own casts and leaves constant folding to the runtime.
OPTIMIZE_GRAPH = False


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how.

    exporter: ``dynamo`` (PyTorch's current exporter) or ``torchscript`` (the older one, used
    only when the current one failed or cannot write the opset: ``exporter_fallback`` then
    holds why). records: one
    :class:`LayerRecord` per lowbit layer (``action`` ``fallback`` where a tensor could not be
    written as integer Q/DQ, with the reason). node_counts: ops of the graph by type.
    """

    path: Path
    opset: int
    exporter: str
    exporter_fallback: str | None
    records: list[LayerRecord]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    node_counts: dict[str, int]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def fallbacks(self) -> list[str]:
        """``"layer: reason"`` for every layer that fell back (empty when none did)."""
        return [f"{r.name}: {r.kernel_reason}" for r in self.records if r.action == "fallback"]

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["fallbacks"] = self.fallbacks
        return out


# ---------------------------------------------------------------------------- inputs


def _check_opset(opset: Any) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError("opset", opset, f"None or an integer in [{MIN_OPSET}, {MAX_OPSET}]",
                          fix=f"pass opset=None (uses {DEFAULT_OPSET}: INT4, INT16 and blocked "
                              "Q/DQ) or e.g. opset=17 for older runtimes")
    return opset


# ---------------------------------------------------------------------------- the model


def _probe(model: nn.Module, by_keyword, names, tensors):
    """Run ``model`` once; return each lowbit layer's input shape and the output names."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) in REWRITES:
            def hook(_m, args, name=name):
                if args and isinstance(args[0], torch.Tensor):
                    shapes.setdefault(name, tuple(args[0].shape))
            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            out = model(**dict(zip(names, tensors))) if by_keyword else model(*tensors)
    finally:
        for h in handles:
            h.remove()
    return shapes, flatten_outputs(out)[0]


def _check_states(model: nn.Module) -> None:
    """Fail early, naming the layer, when a lowbit layer is not ready to export."""
    from ..nn.quantizer import TensorQuantizer
    from .modules import check_quantizer

    for name, module in model.named_modules():
        for role in ("weight", "act"):
            quantizer = getattr(module, f"{role}_quantizer", None)
            if isinstance(quantizer, TensorQuantizer):
                check_quantizer(name, role, quantizer)


def _prepare(model: nn.Module, opset: int, by_keyword, names, tensors):
    """A rewritten deep copy of ``model`` for ``opset``, its records and output names."""
    try:
        work = copy.deepcopy(model).eval()
    except Exception as exc:  # noqa: BLE001 - any copy failure means we cannot work safely
        raise ExportError(f"the model cannot be deep-copied ({exc}); export works on a copy "
                          "so as never to modify the model. Fix: make the model copyable") from exc
    _check_states(work)
    shapes, out_names = _probe(work, by_keyword, names, tensors)
    root, records = rewrite(work, opset, shapes)
    return Flat(root, names, by_keyword).eval(), records, out_names


# ---------------------------------------------------------------------------- exporters


class ExportUnavailable(RuntimeError):
    """An exporter cannot write what was asked (internal: triggers the fallback)."""


def _export_dynamo(wrapper, tensors, names, out_names, axes, opset):
    if opset < DYNAMO_MIN_OPSET:
        raise ExportUnavailable(f"the dynamo exporter writes opset >= {DYNAMO_MIN_OPSET} only "
                                f"(asked for {opset})")
    shapes = (tuple(axes.get(n) or None for n in names),) if axes else None
    with exporting("dynamo", opset):
        program = torch.onnx.export(wrapper, tuple(tensors), dynamo=True, verbose=False,
                                    opset_version=opset, input_names=names,
                                    output_names=out_names, dynamic_shapes=shapes,
                                    optimize=OPTIMIZE_GRAPH)
    proto = program.model_proto
    written = onnx_graph.default_opset(proto)
    if written != opset:
        raise ExportUnavailable(f"the dynamo exporter wrote opset {written}, not {opset}")
    return proto



def _export_torchscript(wrapper, tensors, names, out_names, axes, opset):
    onnx = onnx_graph.require_onnx()
    all_axes = dict(axes)
    if any(0 in a for a in axes.values()):
        all_axes.update({n: {0: "batch"} for n in out_names})
    buffer = io.BytesIO()
    with exporting("torchscript", opset), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, tuple(tensors), buffer, dynamo=False, verbose=False,
                          opset_version=opset, input_names=names, output_names=out_names,
                          dynamic_axes=all_axes or None, do_constant_folding=True,
                          custom_opsets={MARKER_DOMAIN: 1})
    traced = [str(w.message).splitlines()[0] for w in caught
              if issubclass(w.category, torch.jit.TracerWarning)
              and "Python boolean" in str(w.message)]
    for w in caught:  # pass on the warnings lowbit does not handle itself
        if not issubclass(w.category, torch.jit.TracerWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return onnx.load_from_string(buffer.getvalue()), traced


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def _check_target(path: Path) -> None:
    """ConfigError unless ``path`` can become a file (checked before the slow export)."""
    if path.is_dir():
        raise ConfigError("path", str(path), "a file path such as 'model.onnx', not a directory",
                          fix=f"pass e.g. {str(path / 'model.onnx')!r}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError("path", str(path), "a path whose folders are folders",
                                  fix=f"{str(parent)!r} is a file: choose another location")
            break


def _save(proto, path: Path) -> None:
    """Write atomically (a temporary file, then rename); external data beyond 2 GB.  An
    ``OSError`` becomes an :class:`ExportError` and leaves no temporary file behind."""
    onnx = onnx_graph.require_onnx()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    large = proto.ByteSize() > 2**31 - 2**20
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(tmp), save_as_external_data=large,
                        location=path.name + ".data" if large else None)
        os.replace(tmp, path)
    except OSError as exc:
        raise ExportError(f"{path}: cannot write the ONNX file ({exc.strerror or exc}). Fix: "
                          "export to a writable folder with free space") from None
    finally:
        tmp.unlink(missing_ok=True)
    onnx.checker.check_model(str(path))


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *,
                opset: int | None = None, dynamic_batch: bool = True,
                dynamic_axes: Mapping[str, Any] | None = None) -> ExportResult:
    """Export a calibrated fake-quant or converted lowbit model to ONNX with Q/DQ nodes.

    example_inputs: one batch (a tensor, a tuple of positional tensors, or a dict of keyword
    tensors such as a tokenizer batch). path: the ``.onnx`` file to write (folders created).
    opset: ONNX opset in [13, 23]; None uses 21 (INT4, INT16 and blocked Q/DQ). Lower opsets
    write what they can and record the rest (int4 codes as INT8; per-group or 16-bit weights as
    float); opsets below 18 are written by the TorchScript exporter (recorded). dynamic_batch: make axis 0 of every input dynamic (and axis 1 of integer 2-D inputs:
    token ids, masks). dynamic_axes: explicit ``{input: {axis: name}}`` instead.

    Weights become integer initializers + DequantizeLinear, static activations QuantizeLinear
    -> DequantizeLinear pairs, dynamic per-token activations their min/max, scale and zero
    point computed in the graph. Metadata props ``lowbit.*`` hold lowbit's version, the recipe
    and how every layer was written. Raises :class:`ExportError` when neither exporter can
    export the model (or a lowbit module has no rewrite), :class:`StateError` when a layer is
    uncalibrated, :class:`ConfigError` for bad options.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module",
                          fix="pass the lowbit model (fake-quant or converted)")
    opset = _check_opset(opset)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ConfigError("path", path, "a file path such as 'model.onnx'",
                          fix="pass the output file, e.g. export_onnx(qmodel, x, 'model.onnx')")
    path = Path(path)
    _check_target(path)
    by_keyword, names, tensors = split_inputs(model, example_inputs)
    axes = dynamic_axes_for(names, tensors, dynamic_batch, dynamic_axes)
    check_dynamic_sizes(names, tensors, axes)
    onnx_graph.require_onnx()

    wrapper, records, out_names = _prepare(model, opset, by_keyword, names, tensors)
    exporter, reason, traced = "dynamo", None, []
    try:
        proto = _export_dynamo(wrapper, tensors, names, out_names, axes, opset)
    except LowbitError:
        raise
    except Exception as exc:  # noqa: BLE001 - any exporter failure triggers the fallback
        failure = _first_line(exc)
        ts_opset = min(opset, TORCHSCRIPT_MAX_OPSET)
        logger.warning("the dynamo exporter (torch.onnx.export(dynamo=True)) did not export "
                       "the model (%s); falling back to the TorchScript exporter at opset %d",
                       failure, ts_opset)
        exporter, reason = "torchscript", failure
        if ts_opset != opset:
            reason += f"; TorchScript exporter used opset {ts_opset} instead of {opset}"
            opset = ts_opset
            wrapper, records, out_names = _prepare(model, opset, by_keyword, names, tensors)
        try:
            proto, traced = _export_torchscript(wrapper, tensors, names, out_names, axes, opset)
        except Exception as exc2:  # noqa: BLE001
            raise ExportError(f"the model cannot be exported to ONNX: the dynamo exporter "
                              f"failed ({failure}) and the TorchScript exporter failed "
                              f"({_first_line(exc2)}). Fix: make the failing op exportable "
                              "or keep that part of the model out of the export") from exc2
    onnx_graph.expand_markers(proto, opset)
    onnx_graph.fold_initializer_casts(proto)
    onnx_graph.strip_prefix(proto, "model.")
    metadata = _metadata(model, exporter, reason, opset, records, names, out_names)
    if traced:
        metadata["lowbit.traced_control_flow"] = f"{len(traced)} tensor(s) converted to a " \
            f"Python bool while tracing, e.g. {traced[0][:200]}"
        warnings.warn(f"exporting {type(model).__name__}: the TorchScript exporter traced "
                      "through Python control flow on tensor values; the ONNX file keeps only "
                      "the branch the example inputs took (recorded in the file's metadata "
                      "'lowbit.traced_control_flow'). Validate with other inputs, or make the "
                      "branch a tensor op (torch.where)", UserWarning, stacklevel=2)
    onnx_graph.set_metadata(proto, metadata)
    proto.doc_string = f"exported by lowbit {__version__}"
    _save(proto, path)
    result = ExportResult(path, opset, exporter, reason, records, names, list(out_names), axes,
                          onnx_graph.node_counts(proto), metadata)
    if not records:
        logger.warning("%s has no lowbit layers: exported as a float model",
                       type(model).__name__)
    for line in result.fallbacks:
        logger.info("export fallback: %s", line)
    logger.info("exported %d lowbit layer(s) to %s (%s exporter, opset %d, %d fallback(s))",
                len(records), path, exporter, opset, len(result.fallbacks))
    return result


def _metadata(model, exporter, reason, opset, records, names, out_names) -> dict[str, str]:
    try:
        recipe = lowbit_state(model).recipe
        recipe_json, recipe_name = json.dumps(recipe.to_dict()), recipe.name
    except StateError:  # not prepared by lowbit (float model or hand-built layers)
        recipe_json, recipe_name = "null", ""
    layers = [{"name": r.name, "module_type": r.module_type, "action": r.action,
               "export": r.kernel, "reason": r.reason} for r in records]
    return {"lowbit.version": __version__, "lowbit.format": "qdq",
            "lowbit.recipe": recipe_json, "lowbit.recipe_name": recipe_name or "",
            "lowbit.exporter": exporter, "lowbit.exporter_fallback": reason or "",
            "lowbit.opset": str(opset), "lowbit.layers": json.dumps(layers),
            "lowbit.inputs": json.dumps(names), "lowbit.outputs": json.dumps(list(out_names)),
            "lowbit.layer_count": str(len(records))}
