"""Compare a reference model with quantized candidates: size, speed, memory, accuracy, error.

``compare(float_model, {"fake-quant": fq, "int8": real}, batches, metric)`` runs every model
on the same batches and measures, per model:

storage_bytes
    What the model stores: ``estimate_model_size(model)["quantized_bytes"]`` (codes, scales,
    zero points and every float parameter and buffer; a fake-quant model still stores float
    weights). ``compression`` is the reference's storage bytes divided by the model's.
latency_ms, throughput
    After ``warmup`` untimed passes over the data, ``repeats`` timed passes; ``latency_ms``
    is the median wall time of one batch over all timed calls, ``throughput`` the samples of
    one pass (the first tensor's dim 0 of each batch, summed) divided by the median pass time.
peak_memory_bytes
    Peak bytes of tensors the forward allocates on top of what was already allocated
    (activations, temporaries and outputs; the weights are not in it, see storage_bytes),
    for one forward of the first batch. On CPU the allocator's allocation and free events are
    replayed from ``torch.autograd.profiler`` (``profile_memory=True``); on CUDA it is
    ``torch.cuda.max_memory_allocated`` minus the bytes allocated before the forward. The
    process's RSS is not used: it is process-wide, never shrinks and counts allocator caches.
    ``None`` when the profiler cannot report allocations (the settings say so).
metric
    ``metric(model)`` when a metric is given (higher or lower is better: the caller knows).
mse, cosine, max_abs_error
    Against the reference's outputs, over every batch's output flattened and concatenated (the
    first tensor of a tuple, dict or Hugging Face output). The reference's own row compares a
    second run with the first: non-zero error there means the model is not deterministic
    (e.g. dropout in training mode).

Models are run under ``torch.inference_mode()`` as they are: nothing is moved, put in eval
mode or otherwise modified. This module logs and never prints; the CLI prints the table.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, InputError, StateError, check_int_range
from ..model.batches import call_batch, call_checked
from ..model.size import estimate_model_size
from ..nn.quantizer import TensorQuantizer
from ..primitives.metrics import cosine, max_abs_error, mse

logger = logging.getLogger(__name__)

PEAK_MEMORY_METHODS = {
    "cpu": "torch.autograd.profiler allocation events (profile_memory=True) replayed over one "
           "forward of the first batch: peak bytes allocated above the bytes allocated before "
           "it (weights excluded)",
    "cuda": "torch.cuda.max_memory_allocated over one forward of the first batch minus "
            "memory_allocated before it (weights excluded)",
    "unavailable": "this torch build's profiler reports no allocations; peak memory not measured",
}
_MAX_ITERATIONS = 100_000


@dataclass
class ModelStats:
    """One model's row of a comparison (see the module docstring for each measurement)."""

    name: str
    storage_bytes: int
    compression: float
    latency_ms: float
    throughput: float
    peak_memory_bytes: int | None
    metric: float | None
    mse: float
    cosine: float
    max_abs_error: float


@dataclass
class ComparisonResult:
    """The rows of :func:`compare`, the first being the reference, and how they were measured."""

    reference: str
    rows: list[ModelStats]
    metric_name: str | None = None
    settings: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> ModelStats:
        """The row of the model called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no model called {name!r}; models: {[r.name for r in self.rows]}")

    @property
    def names(self) -> list[str]:
        """The models' names, reference first."""
        return [r.name for r in self.rows]

    def _headers(self) -> list[str]:
        cols = ["model", "storage", "compression", "latency ms", "samples/s", "peak memory"]
        if self.metric_name is not None:
            cols.append(self.metric_name)
        return cols + ["MSE", "cosine", "max abs err"]

    def _cells(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            cells = [r.name, _bytes(r.storage_bytes), f"{r.compression:.2f}x",
                     f"{r.latency_ms:.3f}", f"{r.throughput:.1f}", _bytes(r.peak_memory_bytes)]
            if self.metric_name is not None:
                cells.append("" if r.metric is None else f"{r.metric:.4f}")
            out.append(cells + [f"{r.mse:.3e}", f"{r.cosine:.6f}", f"{r.max_abs_error:.3e}"])
        return out

    def table(self) -> str:
        """A plain-text table, one line per model."""
        headers, cells = self._headers(), self._cells()
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """A Markdown table, followed by how peak memory was measured."""
        headers = self._headers()
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        method = self.settings.get("peak_memory_method")
        if method:
            lines += ["", f"Peak memory: {method}."]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data (JSON-ready): reference, metric_name, settings and rows."""
        return {"reference": self.reference, "metric_name": self.metric_name,
                "settings": dict(self.settings), "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ComparisonResult":
        """The inverse of :meth:`to_dict`."""
        names = {f.name for f in fields(ModelStats)}
        try:
            rows = [ModelStats(**{k: v for k, v in row.items() if k in names})
                    for row in data["rows"]]
            return cls(data["reference"], rows, data.get("metric_name"),
                       dict(data.get("settings") or {}))
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"not a lowbit comparison ({type(exc).__name__}: {exc}); expected "
                             "the dict written by ComparisonResult.to_dict()") from None

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load_json(cls, path: str | Path) -> "ComparisonResult":
        """Read a file written by :meth:`save_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------ inputs


def _named_models(reference: Any, candidates: Any, reference_name: str) -> list[tuple[str, nn.Module]]:
    if isinstance(candidates, Mapping):
        pairs = [(str(k), m) for k, m in candidates.items()]
    elif isinstance(candidates, Sequence) and not isinstance(candidates, (str, bytes)):
        pairs = [(f"{i}:{type(m).__name__}", m) for i, m in enumerate(candidates)]
    else:
        raise ConfigError("candidates", type(candidates).__name__,
                          "a dict name -> model or a list of models",
                          fix='pass e.g. {"fake-quant": fq_model, "int8": real_model}')
    for name, model in [(reference_name, reference)] + pairs:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {name!r}", type(model).__name__, "a torch.nn.Module",
                              fix="pass the models themselves, not their state dicts or paths")
        if any(isinstance(q, TensorQuantizer) and q.observing for q in model.modules()):
            raise StateError(f"model {name!r} is still calibrating (its observers are on), so "
                             "running it would change its ranges; leave the calibrate() block "
                             "or call model.end_calibration() before comparing")
    if reference_name in dict(pairs):
        raise ConfigError("candidates", reference_name, f"names other than the reference's "
                          f"({reference_name!r})", fix="rename the candidate or pass "
                                                       "reference_name=...")
    return [(reference_name, reference)] + pairs


def _batches(data: Any) -> list:
    if isinstance(data, (str, bytes, Mapping, torch.Tensor)) or not isinstance(data, Iterable):
        raise InputError(f"data must be a list of batches, got {type(data).__name__}; wrap a "
                         "single batch in a list: data=[batch]")
    batches = list(data)
    if not batches:
        raise InputError("data is empty: compare needs at least one batch to run the models on. "
                         "Fix: pass a list of input batches, e.g. data=[x]")
    return batches


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    for key in ("last_hidden_state", "logits"):  # Hugging Face outputs
        value = getattr(obj, key, None)
        if isinstance(value, torch.Tensor):
            return value
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for value in values:
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def _batch_size(batch: Any, index: int) -> int:
    t = _first_tensor(batch)
    if t is None or t.dim() == 0:
        raise InputError(f"batch {index} has no tensor with a batch dimension (got "
                         f"{type(batch).__name__}); compare counts samples by the first "
                         "tensor's dim 0: pass batches of tensors")
    return int(t.shape[0])


# ------------------------------------------------------------------------ measurements


def _device(batches: list) -> torch.device:
    t = _first_tensor(batches[0])
    return t.device if t is not None else torch.device("cpu")


def _outputs(model: nn.Module, batches: list, name: str) -> list[torch.Tensor]:
    outs = []
    with torch.inference_mode():
        for i, batch in enumerate(batches):
            out = _first_tensor(call_checked(model, batch, i, f"data batch (model {name!r})"))
            if out is None:
                raise InputError(f"model {name!r} returned no tensor for batch {i}; compare "
                                 "needs a tensor, a tuple/dict holding one, or a Hugging Face "
                                 "output: wrap the model so that forward returns a tensor")
            outs.append(out.detach())
    return outs


def _errors(ref: list[torch.Tensor], outs: list[torch.Tensor], name: str) -> dict:
    for i, (r, o) in enumerate(zip(ref, outs)):
        if r.shape != o.shape:
            raise InputError(f"model {name!r} output of batch {i} has shape {tuple(o.shape)} but "
                             f"the reference's has shape {tuple(r.shape)}; compare models that "
                             "map the same inputs to outputs of the same shape")
    a = torch.cat([r.reshape(-1) for r in ref])
    b = torch.cat([o.reshape(-1) for o in outs])
    return {"mse": mse(a, b), "cosine": cosine(a, b), "max_abs_error": max_abs_error(a, b)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timing(model: nn.Module, batches: list, warmup: int, repeats: int,
            device: torch.device) -> tuple[list[float], list[float]]:
    """Per-call times and per-pass times, in seconds, after ``warmup`` untimed passes."""
    calls, passes = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            for batch in batches:
                call_batch(model, batch)
        for _ in range(repeats):
            total = 0.0
            for batch in batches:
                _sync(device)
                t0 = time.perf_counter()
                call_batch(model, batch)
                _sync(device)
                dt = time.perf_counter() - t0
                calls.append(dt)
                total += dt
            passes.append(total)
    return calls, passes


def _walk_allocations(nodes: Iterable, out: list) -> None:
    for node in nodes:
        extra = node.extra_fields
        if hasattr(extra, "alloc_size"):
            out.append((node.start_time_ns, int(extra.alloc_size), str(extra.device)))
        _walk_allocations(node.children, out)


def _cpu_peak(model: nn.Module, batch: Any) -> int | None:
    # the autograd profiler is the engine under torch.profiler.profile, without the latter's
    # seconds of start-up; kineto_results holds the allocator's events in time order
    with torch.inference_mode(), torch.autograd.profiler.profile(profile_memory=True) as prof:
        call_batch(model, batch)
    results = getattr(prof, "kineto_results", None)
    tree = getattr(results, "experimental_event_tree", None)
    if tree is None:
        return None
    events: list = []
    _walk_allocations(tree(), events)
    current = peak = 0
    for _, size, device in sorted(events):
        if device == "cpu":
            current += size
            peak = max(peak, current)
    return peak


def _cuda_peak(model: nn.Module, batch: Any, device: torch.device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        call_batch(model, batch)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def _peak_memory(model: nn.Module, batch: Any, device: torch.device) -> tuple[int | None, str]:
    if device.type == "cuda":
        return _cuda_peak(model, batch, device), "cuda"
    peak = _cpu_peak(model, batch)
    return peak, ("cpu" if peak is not None else "unavailable")


def _score(metric: Callable[[nn.Module], Any], model: nn.Module, name: str) -> float:
    value = metric(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"metric({name!r}) returned {type(value).__name__}; metric(model) must "
                         "return a number (e.g. accuracy as a float)")
    return float(value)


# ------------------------------------------------------------------------------- compare


def compare(reference_model: nn.Module, candidates: Any, data: Any,
            metric: Callable[[nn.Module], float] | None = None, *, warmup: int = 2,
            repeats: int = 10, out_json: str | Path | None = None,
            metric_name: str | None = None, reference_name: str = "reference"
            ) -> ComparisonResult:
    """Measure ``reference_model`` and each candidate on ``data``; see the module docstring.

    candidates: a dict name -> model, or a list of models (named ``"<index>:<class name>"``).
    data: a list of batches (tuple → positional args, dict → keyword args, else the single
    argument); every model must map a batch to an output of the same shape.
    metric: optional ``metric(model) -> float`` (named ``metric_name``, default the
    function's ``__name__``). warmup: untimed passes over ``data``; repeats: timed passes.
    out_json: also write the result there. Returns a :class:`ComparisonResult`, reference
    first; prints nothing.
    """
    models = _named_models(reference_model, candidates, reference_name)
    batches = _batches(data)
    check_int_range("warmup", warmup, 0, _MAX_ITERATIONS, "pass e.g. warmup=2")
    check_int_range("repeats", repeats, 1, _MAX_ITERATIONS, "pass e.g. repeats=10")
    if metric is not None and not callable(metric):
        raise ConfigError("metric", type(metric).__name__, "None or a callable metric(model) -> "
                          "float", fix="pass a function that scores a model")
    if metric is not None and metric_name is None:
        metric_name = getattr(metric, "__name__", "metric")
    samples = sum(_batch_size(b, i) for i, b in enumerate(batches))
    device = _device(batches)
    ref_out = _outputs(reference_model, batches, reference_name)
    ref_bytes = estimate_model_size(reference_model)["quantized_bytes"]
    rows, methods = [], set()
    for name, model in models:
        if model.training:
            logger.warning("model %r is in training mode: dropout or batch statistics make its "
                           "outputs differ run to run (call .eval() before comparing)", name)
        errors = _errors(ref_out, _outputs(model, batches, name), name)
        calls, passes = _timing(model, batches, warmup, repeats, device)
        peak, method = _peak_memory(model, batches[0], device)
        methods.add(method)
        stored = estimate_model_size(model)["quantized_bytes"]
        row = ModelStats(name=name, storage_bytes=int(stored),
                         compression=ref_bytes / stored if stored else math.nan,
                         latency_ms=statistics.median(calls) * 1e3,
                         throughput=samples / statistics.median(passes), peak_memory_bytes=peak,
                         metric=None if metric is None else _score(metric, model, name), **errors)
        logger.info("compared %s: %d bytes, %.3f ms/batch, cosine %.6f", name,
                    row.storage_bytes, row.latency_ms, row.cosine)
        rows.append(row)
    settings = {"warmup": warmup, "repeats": repeats, "batches": len(batches), "samples": samples,
                "device": str(device), "torch_threads": torch.get_num_threads(),
                "torch_version": torch.__version__,
                "peak_memory_method": "; ".join(PEAK_MEMORY_METHODS[m] for m in sorted(methods))}
    result = ComparisonResult(reference_name, rows, metric_name, settings)
    if out_json is not None:
        result.save_json(out_json)
    return result
