"""ONNX Runtime: lowbit's exported QDQ MiniLM against ONNX Runtime's own ``quantize_dynamic``.

Not a test.  The pretrained all-MiniLM-L6-v2 sentence encoder (all 6 layers) is exported:

* ``float``                 the float model (lowbit's exporter, no lowbit layers): the baseline;
* ``ort quantize_dynamic``  ONNX Runtime's ``quant_pre_process`` + ``quantize_dynamic`` of that
                            float file (int8 weights per tensor, its defaults);
* ``ort ... reduce_range``  the same with ``per_channel=True, reduce_range=True`` (7-bit
                            weights: ONNX Runtime's advice for x86 CPUs without VNNI);
* ``lowbit w8a8``           int8 per-channel weights, per-token dynamic activations in the graph;
* ``lowbit w8a8-static``    int8 per-channel weights, calibrated per-tensor activations (Q/DQ);

lowbit's files run twice: with ONNX Runtime's default kernels (``default``; on x86 without VNNI
its U8S8 int8 GEMMs can saturate and weight-only MatMuls quantize activations) and with
``kernels="exact"`` (U8U8 GEMMs, float activations in MatMulNBits: the exported arithmetic).

For 32 sentences padded to 128 tokens (one batch), every session is timed round-robin: each
round runs every session once in a fresh random order, so load changes on a shared machine hit
all alike.  Reported per session: median, quartiles and minimum latency (ms), the median as a
ratio of the float baseline's (same rounds), the mean and minimum cosine of its embeddings to
the PyTorch float model's, and the file size.  ONNX Runtime uses ``--threads`` intra-op threads
(2 by default) and one inter-op thread.

    python benchmarks/bench_onnx.py [--repeats 10] [--warmup 1] [--threads 2] [--out PATH]

Writes JSON (machine, versions, settings, every number) to benchmarks/results/onnx.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lowbit
from lowbit.export import export_onnx
from lowbit.export.validate import compare_outputs, ort_feeds, ort_session
from lowbit.zoo import load_minilm, pydoc_sentences, tokenize_batches

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("w8a8", "w8a8-static")


def machine() -> dict:
    """CPU name, cores, the int8 dot-product extensions ONNX Runtime cares about, load."""
    flags, name = set(), platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "platform": platform.platform(),
            "avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni"}),
            "amx_int8": "amx_int8" in flags,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def ort_quantize_dynamic(float_path: Path, out: Path, **options) -> Path:
    """ONNX Runtime's recommended flow: pre-process (ORT graph optimisation), then quantize."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + "_pre.onnx")
    if not pre.exists():
        # symbolic shape inference does not follow the dynamo exporter's graph; ORT's own
        # optimisation (constant folding of the weight transposes) is what quantization needs
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
    quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, **options)
    return out


def build(workdir: Path, calib_sentences: list[str], model, tokenizer, example) -> list[dict]:
    """Export every candidate; returns ``[{name, path, kernels, torch_model}]``."""
    runs = []
    float_path = export_onnx(model, example, workdir / "minilm_float.onnx").path
    runs.append({"name": "float", "path": float_path, "kernels": "default", "torch": model})
    qd = ort_quantize_dynamic(float_path, workdir / "minilm_ort_qd.onnx")
    runs.append({"name": "ort quantize_dynamic", "path": qd, "kernels": "default"})
    qd_rr = ort_quantize_dynamic(float_path, workdir / "minilm_ort_qd_rr.onnx",
                                 per_channel=True, reduce_range=True)
    runs.append({"name": "ort quantize_dynamic reduce_range", "path": qd_rr,
                 "kernels": "default"})
    calib = tokenize_batches(tokenizer, calib_sentences, batch_size=8, max_length=128)
    for recipe in RECIPES:
        qmodel, _ = lowbit.quantize_model(model, recipe, calib)
        result = export_onnx(qmodel, example, workdir / f"minilm_{recipe}.onnx")
        for kernels in ("default", "exact"):
            runs.append({"name": f"lowbit {recipe}", "path": result.path, "kernels": kernels,
                         "torch": qmodel, "exporter": result.exporter,
                         "fallbacks": result.fallbacks})
    return runs


def time_sessions(runs: list[dict], feeds: list[dict], repeats: int, warmup: int,
                  seed: int) -> None:
    """Round-robin timing; fills ``run["times_ms"]``."""
    for run, feed in zip(runs, feeds):
        for _ in range(warmup):
            run["session"].run(None, feed)
        run["times_ms"] = []
    order = list(range(len(runs)))
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for i in order:
            t0 = time.perf_counter()
            runs[i]["session"].run(None, feeds[i])
            runs[i]["times_ms"].append((time.perf_counter() - t0) * 1e3)


def summarize(run: dict, baseline_ms: float) -> dict:
    times = sorted(run["times_ms"])
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    median = statistics.median(times)
    out = {"name": run["name"], "kernels": run["kernels"], "file": run["path"].name,
           "file_mb": round(run["path"].stat().st_size / 2**20, 2),
           "median_ms": round(median, 2), "p25_ms": round(q[0], 2), "p75_ms": round(q[2], 2),
           "min_ms": round(times[0], 2), "ratio_to_float": round(median / baseline_ms, 3),
           "cosine_to_float_mean": run["cosine"]["mean_cosine"],
           "cosine_to_float_min": run["cosine"]["min_cosine"]}
    for key in ("exporter", "fallbacks", "torch_cosine_to_float_mean"):
        if key in run:
            out[key] = run[key]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed rounds (one run of every session each; ~3 s a run here)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the .onnx files here")
    parser.add_argument("--out", default=str(RESULTS / "onnx.json"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.time()
    host_before = machine()

    model, tokenizer = load_minilm()
    sentences = pydoc_sentences(2 * args.sentences, seed=args.seed)
    evaluation, calibration = sentences[:args.sentences], sentences[args.sentences:]
    encoded = tokenizer(evaluation, padding="max_length", max_length=args.tokens,
                        truncation=True, return_tensors="pt")
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    example = {k: v[:4] for k, v in batch.items()}  # a smaller example: the batch is dynamic
    with torch.no_grad():
        reference = model(**batch).numpy()  # PyTorch float embeddings (32, 384)

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lowbit_bench_onnx_"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_build = time.time()
    runs = build(workdir, calibration, model, tokenizer, example)
    build_s = time.time() - t_build
    feeds = []
    for run in runs:
        run["session"] = ort_session(run["path"], threads=args.threads, kernels=run["kernels"])
        feeds.append(ort_feeds(run["session"], batch))
        embeddings = run["session"].run(None, feeds[-1])[0]
        run["cosine"] = compare_outputs(reference, embeddings)
        if "torch" in run:
            with torch.no_grad():
                mine = run["torch"](**batch).numpy()
            run["torch_cosine_to_float_mean"] = compare_outputs(reference, mine)["mean_cosine"]
    time_sessions(runs, feeds, args.repeats, args.warmup, args.seed)
    baseline = statistics.median(runs[0]["times_ms"])
    results = [summarize(run, baseline) for run in runs]

    report = {
        "benchmark": "onnx_runtime_minilm",
        "machine": host_before, "load_average_after": machine()["load_average"],
        "versions": {"lowbit": lowbit.__version__, "torch": torch.__version__,
                     "onnxruntime": __import__("onnxruntime").__version__,
                     "onnx": __import__("onnx").__version__, "numpy": np.__version__},
        "settings": {"sentences": args.sentences, "tokens": args.tokens,
                     "repeats": args.repeats, "warmup": args.warmup,
                     "intra_op_threads": args.threads, "inter_op_threads": 1,
                     "seed": args.seed, "model": "all-MiniLM-L6-v2 (6 layers)",
                     "calibration": f"{len(calibration)} other sentences, batches of 8"},
        "build_seconds": round(build_s, 1), "total_seconds": round(time.time() - started, 1),
        "results": results,
        "notes": [
            "latency: one batch of all sentences per run; median over round-robin rounds; "
            "ratio_to_float = median / the float ONNX model's median in the same rounds",
            "cosine_to_float: per-sentence cosine between the session's embeddings and the "
            "PyTorch float model's; torch_cosine_to_float_mean: the same for lowbit's own "
            "PyTorch model (what the export should reproduce)",
            "kernels=default: ONNX Runtime's fastest kernels (on x86 without VNNI U8S8 GEMMs "
            "can saturate with full 8-bit weights); kernels=exact: U8U8 GEMMs and float "
            "activations in MatMulNBits (lowbit.export.validate.EXACT_INT8_CONFIG)",
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    header = f"{'model':36s} {'kernels':8s} {'median ms':>10s} {'x float':>8s} " \
             f"{'cos mean':>9s} {'cos min':>8s} {'MB':>6s}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['name']:36s} {r['kernels']:8s} {r['median_ms']:10.1f} "
              f"{r['ratio_to_float']:8.2f} {r['cosine_to_float_mean']:9.5f} "
              f"{r['cosine_to_float_min']:8.5f} {r['file_mb']:6.1f}")
    print(f"\nCPU {host_before['cpu']} (VNNI: {host_before['vnni']}), {args.threads} threads, "
          f"load {host_before['load_average']} -> {report['load_average_after']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
