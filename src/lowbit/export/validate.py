"""Run an exported file in ONNX Runtime and hold it against the PyTorch model.

``onnxruntime`` is imported inside the functions, so importing lowbit never imports it.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ExportError, InputError, check_int_range
from ..model.batches import split_batch
from ..runtime import eval_mode
from .signature import flatten_outputs

#: How ONNX Runtime runs the graph (see :func:`ort_session`).
KERNELS = ("exact", "default", "reference")
#: session config entries of the ``exact`` mode
EXACT_INT8_CONFIG = {
    # x86-64: U8U8 integer GEMMs instead of U8S8, whose int16 pair sums saturate on CPUs
    # without VNNI (AVX2, AVX-512F) when weights use all 8 bits
    "session.x64quantprecision": "1",
    # DequantizeLinear + MatMul fused to MatMulNBits keeps float activations (level 4, the
    # default, quantizes them to int8 on the fly)
    "session.qdq_matmulnbits_accuracy_level": "1",
}


def require_onnxruntime():
    """Import ``onnxruntime`` or raise :class:`ExportError` with the install line."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportError("validating ONNX needs the optional package 'onnxruntime' (import "
                          f"failed: {exc}). Fix: pip install \"lowbit[onnx]\"") from exc
    return onnxruntime


def ort_session(path: str | os.PathLike, *, threads: int | None = None,
                kernels: str = "exact"):
    """An ONNX Runtime ``InferenceSession`` on the CPU execution provider.

    threads: intra-op threads (None: ONNX Runtime's default); inter-op is 1.
    kernels: ``exact`` — every graph optimization (Q/DQ fused into integer kernels) with
    kernels that keep the graph's arithmetic (:data:`EXACT_INT8_CONFIG`); ``default`` — ONNX
    Runtime's defaults, its fastest kernels, which on x86-64 without VNNI can saturate int8
    GEMMs and quantize activations of weight-only MatMuls; ``reference`` — no graph
    optimization: the file's nodes one by one.
    """
    ort = require_onnxruntime()
    if threads is not None:
        check_int_range("threads", threads, 1, 1024)
    if kernels not in KERNELS:
        raise ConfigError("kernels", kernels, f"one of {KERNELS}",
                          fix="'exact' checks the exported arithmetic with fused integer "
                              "kernels; 'default' runs ONNX Runtime's defaults")
    levels = ort.GraphOptimizationLevel
    options = ort.SessionOptions()
    options.graph_optimization_level = (levels.ORT_DISABLE_ALL if kernels == "reference"
                                        else levels.ORT_ENABLE_ALL)
    if kernels == "exact":
        for key, value in EXACT_INT8_CONFIG.items():
            options.add_session_config_entry(key, value)
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"{path}: ONNX Runtime cannot load this file ({first}). Fix: pass a "
                          "file written by export_onnx (an ONNX model)") from None


def ort_feeds(session, inputs: Any) -> dict[str, np.ndarray]:
    """Map one batch (tensor, tuple or dict, as the model takes it) onto the session's inputs."""
    names = [i.name for i in session.get_inputs()]
    args, kwargs = split_batch(inputs)
    if kwargs:
        missing = [n for n in names if kwargs.get(n) is None]
        if missing:
            raise InputError(f"the ONNX file takes inputs {names} but the batch lacks "
                             f"{missing}; pass a dict with those keys")
        return {n: _numpy(kwargs[n]) for n in names}
    if len(args) != len(names):
        raise InputError(f"the ONNX file takes {len(names)} input(s) {names} but the batch "
                         f"has {len(args)}; pass the inputs the model was exported with")
    return {n: _numpy(a) for n, a in zip(names, args)}


def _numpy(t: Any) -> np.ndarray:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"ONNX inputs must be tensors, got {type(t).__name__}")
    return t.detach().cpu().contiguous().numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def compare_outputs(expected: np.ndarray, actual: np.ndarray) -> dict:
    """Max/mean abs error, relative L2 error ``|a - e| / |e|``, norm ratio ``|a| / |e|``,
    overall cosine, and per-sample (row of axis 0) cosines."""
    e = expected.astype(np.float64)
    a = actual.astype(np.float64)
    diff = np.abs(e - a)
    rows = e.reshape(e.shape[0], -1) if e.ndim >= 2 and e.shape[0] else e.reshape(1, -1)
    rows_a = a.reshape(rows.shape)
    sample = [_cosine(x, y) for x, y in zip(rows, rows_a)]
    norm_e, norm_a = float(np.linalg.norm(e)), float(np.linalg.norm(a))
    norm_d = float(np.linalg.norm(e - a))
    rel = norm_d / norm_e if norm_e else (0.0 if norm_d == 0.0 else math.inf)
    ratio = norm_a / norm_e if norm_e else (1.0 if norm_a == 0.0 else math.inf)
    return {"shape": list(e.shape), "rel_error": rel, "norm_ratio": ratio, "max_abs_error": float(diff.max()) if diff.size else 0.0,
            "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
            "cosine": _cosine(e.ravel(), a.ravel()),
            "mean_cosine": float(np.mean(sample)) if sample else 1.0,
            "min_cosine": float(np.min(sample)) if sample else 1.0}


def _run_torch(model: nn.Module, inputs: Any) -> list[np.ndarray]:
    args, kwargs = split_batch(inputs)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with eval_mode(model), torch.no_grad():
        out = model(*args, **kwargs)
    return [_real_view(t).cpu().numpy() for t in flatten_outputs(out)[1]]


def _real_view(t: torch.Tensor) -> torch.Tensor:
    """float32 of ``t``; a complex tensor as (..., 2) real/imaginary pairs, the layout the
    exporter writes complex outputs in."""
    t = t.detach()
    return torch.view_as_real(t.to(torch.complex64)) if t.is_complex() else t.float()


def validate_onnx(path: str | os.PathLike, model: nn.Module, inputs: Any, *,
                  atol: float | None = None, min_cosine: float = 0.999,
                  max_rel_error: float | None = None, threads: int | None = None,
                  kernels: str = "exact") -> dict:
    """Run ``path`` in ONNX Runtime (CPU) and compare it with ``model`` on ``inputs``.

    inputs: one batch as the model takes it (tensor, tuple, or dict of keyword tensors); its
    batch size may differ from the export example's when the batch axis is dynamic.
    Passes when, for every output, the mean per-sample cosine is at least ``min_cosine``, the
    relative L2 error ``|onnx - torch| / |torch|`` is at most ``max_rel_error`` (so outputs of
    the right direction but the wrong size fail), and (when given) the max abs error is at
    most ``atol``; otherwise raises :class:`ExportError` naming the output, the numbers and
    the tolerance.  ``max_rel_error=None`` derives the bound (:func:`rel_error_bound`, stated
    in the result with how it was derived).  The file is run on ``inputs`` and on a second
    batch derived from them (:func:`probe_inputs`: other values, so that a branch frozen at
    export shows); a file whose export traced through Python control flow also warns. kernels and threads: how ONNX Runtime
    runs (see :func:`ort_session`; ``default`` checks ONNX Runtime's fastest kernels on this
    CPU, which may be lossy). The model runs in eval mode without
    grad (its mode is restored). Returns ``{"outputs": {name: metrics}, "probe_outputs",
    "max_abs_error", "max_rel_error", "mean_cosine", "min_cosine", "atol",
    "min_cosine_required", "max_rel_error_allowed", "rel_error_bound_source", "warnings",
    "passed", "path"}``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError("path", type(path).__name__, "a path to an .onnx file",
                          fix="pass the path that export_onnx wrote")
    path = Path(path)
    if not path.is_file():
        raise ConfigError("path", str(path), "an existing .onnx file",
                          fix="pass the path that export_onnx wrote")
    if not isinstance(model, nn.Module):
        raise ConfigError("model", type(model).__name__, "a torch.nn.Module",
                          fix="pass the PyTorch model the file was exported from")
    if atol is not None and (isinstance(atol, bool) or not isinstance(atol, (int, float))
                             or not atol >= 0):
        raise ConfigError("atol", atol, "None or a number >= 0", fix="e.g. atol=1e-4")
    if isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float)) \
            or not -1.0 <= min_cosine <= 1.0:
        raise ConfigError("min_cosine", min_cosine, "a number in [-1, 1]",
                          fix="e.g. min_cosine=0.999")
    if max_rel_error is not None and (isinstance(max_rel_error, bool)
                                      or not isinstance(max_rel_error, (int, float))
                                      or not max_rel_error >= 0):
        raise ConfigError("max_rel_error", max_rel_error, "None or a number >= 0",
                          fix="e.g. max_rel_error=0.05, or None to derive it from the model")
    session = ort_session(path, threads=threads, kernels=kernels)
    if max_rel_error is None:
        max_rel_error, source = rel_error_bound(model, min_cosine)
    else:
        source = "given"
    warned = _control_flow_warning(path, session)
    outputs = _compare(path, session, model, inputs)
    probe = probe_inputs(inputs)
    probe_outputs = _compare(path, session, model, probe) if probe is not None else {}
    every = list(outputs.values()) + list(probe_outputs.values())
    report = {"path": str(path), "outputs": outputs, "probe_outputs": probe_outputs,
              "max_abs_error": max(m["max_abs_error"] for m in every),
              "max_rel_error": max(m["rel_error"] for m in every),
              "mean_cosine": min(m["mean_cosine"] for m in every),
              "min_cosine": min(m["min_cosine"] for m in every),
              "atol": atol, "min_cosine_required": float(min_cosine),
              "max_rel_error_allowed": float(max_rel_error), "rel_error_bound_source": source,
              "warnings": warned, "passed": True}
    for batch, results in (("the given inputs", outputs), ("the probe inputs", probe_outputs)):
        for name, m in results.items():
            too_far = atol is not None and not m["max_abs_error"] <= atol
            if too_far or not m["mean_cosine"] >= min_cosine \
                    or not m["rel_error"] <= max_rel_error or math.isnan(m["max_abs_error"]):
                raise ExportError(
                    f"{path}: ONNX Runtime output {name!r} does not match the PyTorch model on "
                    f"{batch}: max abs error {m['max_abs_error']:.6g} (atol {atol}), relative "
                    f"error {m['rel_error']:.4g} (max_rel_error {max_rel_error:.4g}, {source}), "
                    f"norm ratio {m['norm_ratio']:.4g}, mean cosine {m['mean_cosine']:.6f} "
                    f"(min_cosine {min_cosine}).{_hint(warned)} Fix: export the model you "
                    "validate against, check the export's fallbacks, or loosen the tolerance")
    return report


def _compare(path: Path, session, model: nn.Module, inputs: Any) -> dict:
    feeds = ort_feeds(session, inputs)
    try:
        actual = session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        shapes = {k: tuple(v.shape) for k, v in feeds.items()}
        expected_shapes = {i.name: i.shape for i in session.get_inputs()}
        raise InputError(f"{path}: ONNX Runtime cannot run the inputs {shapes} (the file takes "
                         f"{expected_shapes}): {str(exc).strip().splitlines()[0][:300]}. Fix: "
                         "pass inputs of the shapes and dtypes the model was exported "
                         "with") from None
    expected = _run_torch(model, inputs)
    names = [o.name for o in session.get_outputs()]
    if len(expected) != len(actual):
        raise ExportError(f"{path}: ONNX Runtime returned {len(actual)} output(s) {names}, the "
                          f"PyTorch model {len(expected)}; export and validate the same model")
    outputs = {}
    for name, e, a in zip(names, expected, actual):
        if tuple(e.shape) != tuple(a.shape):
            raise ExportError(f"{path}: output {name!r} has shape {tuple(a.shape)} in ONNX "
                              f"Runtime but {tuple(e.shape)} in PyTorch; check the dynamic "
                              "axes used at export")
        outputs[name] = compare_outputs(e, a)
    return outputs


def rel_error_bound(model: nn.Module, min_cosine: float) -> tuple[float, str]:
    """The default ``max_rel_error`` and how it was derived.

    Two outputs of equal size with cosine ``c`` differ by ``sqrt(2 (1 - c))`` relative, so
    ``min_cosine`` alone allows that much; a model whose narrowest grid has ``b`` bits may
    differ by a few of its steps, ``2 ** (2 - b)`` relative (1/64 for 8 bits, 1/4 for 4 bits).
    The bound is the larger of the two: an output 2x too large or small always fails.
    """
    from_cosine = math.sqrt(max(0.0, 2.0 * (1.0 - float(min_cosine))))
    bits = narrowest_bits(model)
    from_grid = 2.0 ** (2 - bits) if bits else 0.0
    if from_grid > from_cosine:
        return from_grid, f"2**(2 - {bits}): the model's narrowest grid has {bits} bits"
    return from_cosine, f"sqrt(2 * (1 - min_cosine)) for min_cosine {min_cosine}"


def narrowest_bits(model: nn.Module) -> int | None:
    """The fewest bits of any weight or activation grid in ``model`` (None: no lowbit layer)."""
    bits = []
    for module in model.modules():
        for attr in ("weight_spec", "act_spec"):
            spec = getattr(module, attr, None)
            if spec is not None and hasattr(spec, "qtype"):
                bits.append(spec.qtype.bits)
        spec = getattr(module, "spec", None)
        if spec is not None and hasattr(spec, "qtype") and hasattr(module, "observer"):
            bits.append(spec.qtype.bits)
    return min(bits) if bits else None


def probe_inputs(inputs: Any) -> Any:
    """A second batch from ``inputs`` with other values: floating tensors holding both signs
    negated, non-negative ones reversed along their last axis; integer tensors (token ids,
    masks) kept.  None when nothing could change."""
    args, kwargs = split_batch(inputs)

    def other(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() < 2:
            return t
        if bool((t < 0).any()) and bool((t > 0).any()):
            return -t
        return t.flip(-1)

    new_args = [other(a) for a in args]
    new_kwargs = {k: other(v) for k, v in kwargs.items()}
    changed = any(n is not o for n, o in zip(new_args, args)) or any(
        new_kwargs[k] is not v for k, v in kwargs.items())
    if not changed:
        return None
    if kwargs:
        return new_kwargs
    return tuple(new_args) if isinstance(inputs, (tuple, list)) else new_args[0]


def _control_flow_warning(path: Path, session) -> list[str]:
    """The export's note that tracing went through Python control flow, warned once."""
    meta = session.get_modelmeta().custom_metadata_map
    note = meta.get("lowbit.traced_control_flow", "")
    if not note:
        return []
    message = (f"{path}: the export traced through Python control flow ({note}); the file "
               "holds only the branch the export example took, so validate on inputs that "
               "take the others")
    warnings.warn(message, UserWarning, stacklevel=3)
    return [message]


def _hint(warned: list[str]) -> str:
    return " The export traced through Python control flow: a branch was frozen." if warned \
        else ""
