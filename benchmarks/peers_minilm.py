"""MiniLM-L6 through lowbit and its peers: how each variant is built, and the interleaved timing.

Used by ``bench_peers.py`` (see its docstring for the method).  Every builder takes the shared
:class:`Context` and returns a callable that runs the benchmark batch and returns (32, 384)
float32 embeddings.  A builder that cannot import its package raises :class:`Missing`; any
other exception is recorded as a failure.  Either way the variant is reported as skipped with
the reason and the run goes on.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import lowbit

log = logging.getLogger("bench_peers")



class Missing(Exception):
    """A peer's package is not installed (reported as skipped, not as a failure)."""


@dataclass
class Context:
    model: nn.Module                 # float32 MiniLMEncoder, eval mode (never modified)
    batch: dict[str, torch.Tensor]   # input_ids / attention_mask, (32, 128)
    calib: list[dict[str, torch.Tensor]]  # lowbit calibration batches (other sentences)
    workdir: Path                    # for the ONNX files


def _need(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise Missing(f"{module} not installed ({exc})") from exc


def _torch_runner(model: nn.Module, batch: dict) -> Callable[[], torch.Tensor]:
    return lambda: model(**batch).float()


def float32_eager(ctx: Context):
    return _torch_runner(ctx.model, ctx.batch)


def float32_compile(ctx: Context):
    return _torch_runner(torch.compile(copy.deepcopy(ctx.model)), ctx.batch)


def bf16_weights(ctx: Context):
    return _torch_runner(copy.deepcopy(ctx.model).to(torch.bfloat16), ctx.batch)


def torchao_int8_dynamic_compile(ctx: Context):
    _need("torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    model = copy.deepcopy(ctx.model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())  # per-row weights, per-token acts
    return _torch_runner(torch.compile(model), ctx.batch)


def torchao_int4_cpu(ctx: Context):
    _need("torchao")
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import quantize_
    model = copy.deepcopy(ctx.model).to(torch.bfloat16)  # the CPU int4 kernel takes bf16 input
    quantize_(model, PrototypeInt4WeightOnlyConfig(group_size=128))
    return _torch_runner(model, ctx.batch)


def torch_ao_dynamic_int8(ctx: Context):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    engines = torch.backends.quantized.supported_engines
    if "x86" not in engines:
        raise RuntimeError(f"no x86 quantized engine in this torch build (has {engines})")
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        model = quantize_dynamic(copy.deepcopy(ctx.model), {nn.Linear: per_channel_dynamic_qconfig},
                                 dtype=torch.qint8)
    return _torch_runner(model, ctx.batch)


def _float_onnx(ctx: Context) -> tuple[Path, str]:
    """The float model exported once with ``torch.onnx.export`` at the batch's fixed shape."""
    path = ctx.workdir / "minilm_float.onnx"
    exporter = path.with_suffix(".exporter")
    if path.exists():
        return path, exporter.read_text()
    _need("onnx")
    args = (ctx.batch["input_ids"], ctx.batch["attention_mask"])
    names = dict(input_names=["input_ids", "attention_mask"], output_names=["embeddings"])
    errors = []
    for dynamo in (False, True):  # the TorchScript exporter first: plain ops ORT quantizes well
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(ctx.model, args, str(path), dynamo=dynamo, opset_version=18,
                                  external_data=False, **names)
            exporter.write_text(f"torch.onnx.export(dynamo={dynamo})")
            return path, exporter.read_text()
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
            errors.append(f"dynamo={dynamo}: {type(exc).__name__}: {exc}")
    raise RuntimeError("torch.onnx.export failed: " + " | ".join(errors))


def _ort_runner(path: Path, ctx: Context, threads: int, note: str):
    ort = _need("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: ctx.batch[i.name].numpy() for i in session.get_inputs()}

    def run() -> torch.Tensor:
        return torch.from_numpy(session.run(None, feeds)[0]).float()
    run.note = f"float model from {note}"
    return run


def ort_dynamic_int8(ctx: Context):
    _need("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process
    src, exporter = _float_onnx(ctx)
    pre, out = ctx.workdir / "minilm_pre.onnx", ctx.workdir / "minilm_ort_int8.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return _ort_runner(out, ctx, torch.get_num_threads(), exporter)


def ort_matmulnbits_int4(ctx: Context):
    onnx = _need("onnx")
    _need("onnxruntime")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    src, exporter = _float_onnx(ctx)
    out = ctx.workdir / "minilm_ort_int4.onnx"
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=128,
                                     is_symmetric=True)  # accuracy_level default: float compute
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return _ort_runner(out, ctx, torch.get_num_threads(), exporter)


def _quanto(ctx: Context, weights: str):
    quanto = _need("optimum.quanto")
    model = copy.deepcopy(ctx.model)
    quanto.quantize(model, weights=getattr(quanto, weights))
    quanto.freeze(model)
    return model


def quanto_int8(ctx: Context):
    return _torch_runner(_quanto(ctx, "qint8"), ctx.batch)


def quanto_int4(ctx: Context):
    model, batch = _quanto(ctx, "qint4"), ctx.batch

    def run() -> torch.Tensor:
        # its int4 weight tensor fails under inference_mode ("Cannot set version_counter for
        # inference tensor"): run it under no_grad instead
        with torch.inference_mode(False), torch.no_grad():
            return model(**batch).float()
    run.note = "runs under torch.no_grad (fails under torch.inference_mode)"
    return run


def _lowbit(preset: str, bf16: bool = False, compiled: bool = False):
    def build(ctx: Context):
        qmodel, _ = lowbit.quantize_model(ctx.model, preset, ctx.calib)
        if bf16:  # the model runs in bfloat16; lowbit's qparams stay float32
            qmodel = qmodel.to(torch.bfloat16)
        runner = _torch_runner(lowbit.compile(qmodel) if compiled else qmodel, ctx.batch)
        if compiled:
            runner.note = "lowbit.compile(qmodel): kernels frozen, then torch.compile"
        return runner
    build.__doc__ = (f"lowbit.quantize_model(model, {preset!r}, calib)"
                     + (".to(torch.bfloat16)" if bf16 else "")
                     + (", then lowbit.compile" if compiled else ""))
    return build


def _lowbit_name(preset: str, bf16: bool, compiled: bool) -> str:
    return (f"lowbit {preset}" + (" bf16" if bf16 else "")
            + (" + lowbit.compile" if compiled else ""))


#: (preset, run in bfloat16, compiled) of the lowbit variants: each preset eager in float32,
#: compiled, and the weight-only ones also in bfloat16 (the compute dtype users choose by
#: running the model in it).
LOWBIT_VARIANTS = [("w8a8", False, False), ("w8a8", False, True),
                   ("w8a16", False, False), ("w8a16", True, False), ("w8a16", True, True),
                   ("w4a16-g128", False, False), ("w4a16-g128", True, False),
                   ("w4a16-g128", True, True)]


#: (name, builder) in the order built.  float32 + torch.compile is compiled before torchao is
#: applied: torchao's configs set its recommended inductor options process-wide.
VARIANTS: list[tuple[str, Callable]] = [
    ("float32 eager", float32_eager),
    ("float32 + torch.compile", float32_compile),
    ("bf16 weights", bf16_weights),
    ("torchao int8 dynamic + torch.compile", torchao_int8_dynamic_compile),
    ("torchao int4 CPU (bf16, g128)", torchao_int4_cpu),
    ("torch.ao dynamic int8 per-channel (x86)", torch_ao_dynamic_int8),
    ("ONNX Runtime dynamic int8 per-channel", ort_dynamic_int8),
    ("ONNX Runtime MatMulNBits int4 (g128)", ort_matmulnbits_int4),
    ("optimum-quanto int8 weights", quanto_int8),
    ("optimum-quanto int4 weights", quanto_int4),
] + [(_lowbit_name(*v), _lowbit(*v)) for v in LOWBIT_VARIANTS]


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def run_minilm(ctx: Context, rounds: int, only: set[str] | None = None) -> list[dict]:
    """Build, warm up, then time every variant ``rounds`` times, interleaved; one dict each."""
    rows, runners = [], {}
    for name, build in VARIANTS:
        if only and name not in only and name != "float32 eager":
            continue
        row = {"variant": name, "status": "ok"}
        rows.append(row)
        log.info("building %s", name)
        try:
            t = time.perf_counter()
            fn = build(ctx)
            row["build_s"] = time.perf_counter() - t
            with torch.inference_mode():
                t = time.perf_counter()
                first = fn()  # compiles / picks kernels / allocates: reported, not timed
                row["first_call_s"] = time.perf_counter() - t
                row["embeddings"] = fn()
            if first.shape != row["embeddings"].shape:
                raise RuntimeError(f"output shape {tuple(first.shape)}")
            runners[name] = fn
            if getattr(fn, "note", None):
                row["note"] = fn.note
        except Missing as exc:
            row.update(status="skipped", reason=f"not installed: {exc}")
        except Exception as exc:  # noqa: BLE001 - a failing peer is reported, not fatal
            row.update(status="skipped", reason=f"failed: {_reason(exc)}")
            log.info("%s skipped: %s", name, row["reason"])
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for r in range(rounds):
            log.info("round %d/%d", r + 1, rounds)
            for name, fn in list(runners.items()):  # every round runs every variant once
                try:
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
                except Exception as exc:  # noqa: BLE001
                    runners.pop(name)
                    row = next(x for x in rows if x["variant"] == name)
                    row.update(status="skipped", reason=f"failed while timed: {_reason(exc)}")
    reference = rows[0]["embeddings"]  # float32 eager is built first and never skipped
    base = statistics.median(times["float32 eager"])
    for row in rows:
        emb = row.pop("embeddings", None)
        if row["status"] != "ok":
            continue
        t = times[row["variant"]]
        row["cosine_to_float32"] = F.cosine_similarity(emb, reference, dim=1).mean().item()
        row.update(median_s=statistics.median(t), min_s=min(t), times_s=t,
                   speed_vs_float32_eager=base / statistics.median(t))
    return rows
