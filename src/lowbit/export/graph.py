"""ONNX graph helpers: finish an exported graph, and describe a file (:func:`onnx_info`).

``onnx`` is imported inside the functions, so importing lowbit never imports it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExportError
from .ops import DYNAMIC_MARKER, MARKER_DOMAIN

#: metadata keys lowbit writes (all start with this prefix)
META_PREFIX = "lowbit."


def require_onnx():
    """Import ``onnx`` or raise :class:`ExportError` with the install line."""
    try:
        import onnx
    except ImportError as exc:
        raise ExportError("ONNX export needs the optional package 'onnx' (import failed: "
                          f"{exc}). Fix: pip install \"lowbit[onnx]\"") from exc
    return onnx


def fold_initializer_casts(model) -> int:
    """Replace ``Cast(initializer)`` by an initializer of the target type (INT4, UINT16, ...).

    The exporters carry int4/uint16 codes in wider torch dtypes and cast them in the graph;
    this stores them in their real type.  Returns the number of casts folded.
    """
    require_onnx()
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    renames: dict[str, str] = {}
    folded = 0
    for node in list(graph.node):
        if node.op_type != "Cast" or node.input[0] not in inits:
            continue
        folded += 1
        source = inits[node.input[0]]
        to = next(a.i for a in node.attribute if a.name == "to")
        values = numpy_helper.to_array(source)
        # the typed tensor takes the codes' own name when nothing else reads them
        name = source.name if uses[source.name] == 1 else node.output[0]
        # numpy dtypes of ONNX types (ml_dtypes' int4/uint4 for 4 bits): packed raw bytes
        tensor = numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(to)),
                                         name)
        if name == source.name:
            graph.initializer.remove(source)
            renames[node.output[0]] = name
        graph.initializer.append(tensor)
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    return folded


def expand_markers(model, opset: int) -> int:
    """Replace every dynamic fake-quant marker by standard ONNX ops; returns how many.

    For ``x`` (float) with grid ``[qmin, qmax]``, per token (over the last axis, kept) or per
    tensor, exactly as :func:`lowbit.export.ops.dynamic_qparams`::

        lo = ReduceMin(x), hi = ReduceMax(x)
        symmetric: s = Max(Max(-lo, hi) / qmax, eps)   (unsigned: Max(hi, 0) / qmax), z = 0
        affine:    lo = Min(lo, 0), hi = Max(hi, 0), s = Max((hi - lo) / (qmax - qmin), eps)
                   z = Clip(qmin - Round(lo / s), qmin, qmax)
        q = Clip(Round(x · (1 / s)) + z, qmin, qmax),  y = (q - z) · s
    """
    require_onnx()
    import numpy as np
    from onnx import helper, numpy_helper

    from ..primitives.affine import EPS

    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        if node.domain != MARKER_DOMAIN:
            nodes.append(node)
            continue
        if node.op_type != DYNAMIC_MARKER:
            raise ExportError(f"unknown lowbit marker node {node.op_type!r} in the exported "
                              "graph; this is a lowbit bug, please report it")
        a = {attr.name: attr.i for attr in node.attribute}
        x, out, stem = node.input[0], node.output[0], f"{node.output[0]}/dynamic_quant/"

        def const(name, value, dtype=np.float32):
            graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=dtype),
                                                             stem + name))
            return stem + name

        def add(op, inputs, output=None, **attrs):
            name = output or f"{stem}{op}_{len(nodes)}"
            nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
            return name

        axes = const("axes", [-1], np.int64) if a["per_token"] and opset >= 18 else None

        def reduce(op):
            if not a["per_token"]:
                return add(op, [x], keepdims=0)
            if axes is not None:
                return add(op, [x, axes], keepdims=1)
            return add(op, [x], axes=[-1], keepdims=1)

        qmin, qmax, eps = const("qmin", float(a["qmin"])), const("qmax", float(a["qmax"])), \
            const("eps", EPS)
        lo, hi, zeros = reduce("ReduceMin"), reduce("ReduceMax"), const("zero", 0.0)
        if a["symmetric"]:
            amax = add("Max", [add("Neg", [lo]), hi]) if a["signed"] else add("Max", [hi, zeros])
            scale = add("Max", [add("Div", [amax, qmax]), eps])
            zero = None
        else:
            lo, hi = add("Min", [lo, zeros]), add("Max", [hi, zeros])
            width = const("width", float(a["qmax"] - a["qmin"]))
            scale = add("Max", [add("Div", [add("Sub", [hi, lo]), width]), eps])
            zero = add("Clip", [add("Sub", [qmin, add("Round", [add("Div", [lo, scale])])]),
                                qmin, qmax])
        q = add("Round", [add("Mul", [x, add("Div", [const("one", 1.0), scale])])])
        q = add("Clip", [q if zero is None else add("Add", [q, zero]), qmin, qmax])
        add("Mul", [q if zero is None else add("Sub", [q, zero]), scale], output=out)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [o for o in model.opset_import if o.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return count


def strip_prefix(model, prefix: str) -> None:
    """Drop ``prefix`` from initializer names (the export wrapper's attribute name), so that
    ``blocks.0.conv.weight.codes`` names what the model calls ``blocks.0.conv``."""
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {v.name for v in graph.input} \
        | {o for node in graph.node for o in node.output}
    renames = {}
    for t in graph.initializer:
        new = t.name[len(prefix):]
        if t.name.startswith(prefix) and new and new not in taken:
            renames[t.name] = new
            taken.add(new)
    for t in graph.initializer:
        t.name = renames.get(t.name, t.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def set_metadata(model, props: dict[str, str]) -> None:
    """Set ``metadata_props`` entries (replacing entries with the same key)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in keep + list(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def default_opset(model) -> int | None:
    """The opset of the default (``ai.onnx``) domain of ``model``."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def node_counts(model) -> dict[str, int]:
    """Nodes of the main graph by op type (``domain::op`` outside the default domain)."""
    counts = Counter(node.op_type if node.domain in ("", "ai.onnx") else
                     f"{node.domain}::{node.op_type}" for node in model.graph.node)
    return dict(sorted(counts.items()))


def _value_info(value, onnx) -> dict:
    tensor = value.type.tensor_type
    dims: list[Any] = []
    for d in tensor.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else
                    d.dim_param if d.HasField("dim_param") else None)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None
    return {"name": value.name, "shape": dims,
            "dtype": str(dtype) if dtype is not None else None,
            "onnx_type": onnx.TensorProto.DataType.Name(tensor.elem_type)}


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def onnx_info(path: str | Path) -> dict:
    """Describe an ONNX file: inputs and outputs, parameters, Q/DQ nodes, opset, metadata.

    Returns ``inputs``/``outputs`` (``name``, ``shape`` with ints for fixed and names for
    symbolic dims, numpy ``dtype``, ``onnx_type``), ``parameters`` (elements in initializers),
    ``initializer_bytes``, ``initializer_types`` (elements by ONNX type), ``quantize_linear``
    and ``dequantize_linear`` counts, ``node_counts`` (every op type), ``opset``,
    ``ir_version``, ``producer``, ``metadata`` (all metadata props, raw) and ``quantization``
    (lowbit's entries with JSON values parsed; empty for files lowbit did not write).
    """
    if not isinstance(path, (str, Path)):
        raise ConfigError("path", type(path).__name__, "a path (str or pathlib.Path) to an "
                          ".onnx file", fix="pass the path that export_onnx wrote")
    onnx = require_onnx()
    path = Path(path)
    if not path.is_file():
        raise ConfigError("path", str(path), "an existing .onnx file",
                          fix="pass the path that export_onnx wrote")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise ExportError(f"{path} is not a readable ONNX model: {exc}") from exc
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    params = 0
    nbytes = 0
    by_type: Counter = Counter()
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        params += n
        by_type[onnx.TensorProto.DataType.Name(t.data_type)] += n
        nbytes += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    counts = node_counts(model)
    metadata = {p.key: p.value for p in model.metadata_props}
    quant = {k[len(META_PREFIX):]: _parse(v) for k, v in metadata.items()
             if k.startswith(META_PREFIX)}
    opset = default_opset(model)
    return {
        "path": str(path),
        "inputs": [_value_info(v, onnx) for v in graph.input if v.name not in inits],
        "outputs": [_value_info(v, onnx) for v in graph.output],
        "parameters": params,
        "initializer_bytes": nbytes,
        "initializer_types": dict(sorted(by_type.items())),
        "quantize_linear": counts.get("QuantizeLinear", 0),
        "dequantize_linear": counts.get("DequantizeLinear", 0),
        "node_counts": counts,
        "opset": opset,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "metadata": metadata,
        "quantization": quant,
    }
