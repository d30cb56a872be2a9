"""Benchmark (b, c): MiniLM-L6 end to end — float32, bfloat16 and lowbit presets.

(b) 32 pydoc sentences padded to 128 tokens (one batch of 32 × 128 = 4096 token rows) through
all-MiniLM-L6-v2: float32, bfloat16 (``model.to(torch.bfloat16)``) and lowbit ``w8a8``,
``w8a16`` and ``w4a16-g128`` (``quantize_model(model, preset, calib_batches)``, converted,
kernel path ``auto``).  Per variant: mean embedding cosine to float32 and speed ratio to
float32 (float32 median / variant median; medians over ``--repeats`` rounds, the variants
interleaved within each round, ``torch.set_num_threads(2)``, ``torch.inference_mode``).

(c) Per preset: bytes of the quantized layers (qdata, scale, zero_point, bias, input qparams)
against their float32 bytes, and the peak memory while converting, measured in a fresh
subprocess per preset: the model is loaded and calibrated, the peak-RSS counter is reset
(``/proc/self/clear_refs`` ``5``; without it the ``ru_maxrss`` high-water mark is used), then
``convert(inplace=True)`` runs and the new peak (``VmHWM``) is compared with the RSS just
before converting and with the float model's bytes + its largest layer's bytes (the
"model plus one layer" budget of :func:`lowbit.model.convert.convert`).

Writes ``benchmarks/results/minilm.json`` and ``minilm.md``.

    python benchmarks/bench_minilm.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PRESETS = ("w8a8", "w8a16", "w4a16-g128")
RESULTS = Path(__file__).resolve().parent / "results"
SEQ = 128


def _batches(tok, n: int, seed: int, pad: bool):
    from lowbit.zoo.minilm import pydoc_sentences, tokenize_batches
    batches = tokenize_batches(tok, pydoc_sentences(n, seed=seed), batch_size=32,
                               max_length=SEQ)
    if pad:  # pad id 0 ([PAD]) and mask 0 up to 128 tokens: every batch is 32 × 128
        batches = [{k: F.pad(v, (0, SEQ - v.shape[1]), value=0) for k, v in b.items()}
                   for b in batches]
    return batches


def _float_layer_bytes(model) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)):
            out[name] = sum(p.numel() * 4 for p in m.parameters(recurse=False))
    return out


def _status(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def convert_memory(preset: str) -> dict:
    """Run in a fresh subprocess: load, calibrate, reset the peak, convert, read the peak."""
    import gc

    from lowbit.model.api import quantize_model
    from lowbit.model.convert import convert
    from lowbit.zoo.minilm import load_minilm
    torch.set_num_threads(2)
    model, tok = load_minilm()
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    largest = max(_float_layer_bytes(model).values())
    calib = _batches(tok, 64, seed=1, pad=False)
    fq, _ = quantize_model(model, preset, calib, convert=False)
    del model, calib
    gc.collect()
    rss_before = _status("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = _status("VmHWM") <= rss_before + (4 << 20)
    except OSError:
        pass
    t = time.perf_counter()
    convert(fq, inplace=True)
    seconds = time.perf_counter() - t
    peak = _status("VmHWM") if reset else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"preset": preset, "float_model_bytes": float_bytes, "largest_layer_bytes": largest,
            "rss_before_convert": rss_before, "ru_maxrss_before_convert": maxrss_before,
            "peak_during_convert": peak, "peak_counter": "VmHWM after clear_refs" if reset
            else "ru_maxrss (high-water mark of the whole run)",
            "convert_extra_bytes": max(0, peak - rss_before), "convert_seconds": seconds}


def _quantized_bytes(qmodel, float_bytes: dict[str, int]) -> dict:
    from lowbit.nn.quantized import QuantizedModule
    q = f = 0
    kinds: dict[str, int] = {}
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantizedModule):
            q += m.nbytes()
            f += float_bytes[name]
            kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    return {"quantized_layer_bytes": q, "float32_layer_bytes": f, "ratio": q / f, "layers": kinds}


def _kernels(qmodel, rows: int) -> dict[str, int]:
    """How many linear layers run each kernel at ``rows`` rows (and why not where reference)."""
    from lowbit.nn.quantized import QuantizedModule
    counts: dict[str, int] = {}
    for m in qmodel.modules():
        if not isinstance(m, QuantizedModule):
            continue
        cached = m.__dict__.get("_kernel")
        if cached is not None:
            c = cached[0].plan.select(rows)
            key = f"{type(m).__name__}: {c.impl.name}[{str(c.compute).replace('torch.', '')}]"
        else:
            key = f"{type(m).__name__}: {m.kernel_path} ({m.kernel_reason.split(';')[0]})"
        counts[key] = counts.get(key, 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(convert_memory(args.child)))
        return

    from lowbit.kernels import environment
    from lowbit.model.api import quantize_model
    from lowbit.zoo.minilm import load_minilm, mean_cosine
    torch.set_num_threads(2)
    model, tok = load_minilm()
    batch = _batches(tok, 32, seed=0, pad=True)[0]
    calib = _batches(tok, 64, seed=1, pad=False)
    float_bytes = _float_layer_bytes(model)

    variants = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    sizes, records = {}, {}
    for preset in PRESETS:
        q, recs = quantize_model(model, preset, calib)
        variants[f"lowbit {preset}"] = q
        sizes[preset] = _quantized_bytes(q, float_bytes)
        records[preset] = recs

    with torch.inference_mode():
        emb = {k: m(**batch).float() for k, m in variants.items()}  # also warms up / prepares
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, m in variants.items():  # interleaved: every round runs every variant
                t = time.perf_counter()
                m(**batch)
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k in variants:
        rows.append({"variant": k, "cosine_to_float32": mean_cosine(emb[k], emb["float32"]),
                     "median_s": med[k], "min_s": min(times[k]),
                     "speed_vs_float32": med["float32"] / med[k], "times_s": times[k]})
    kernels = {p: _kernels(variants[f"lowbit {p}"], batch["input_ids"].numel())
               for p in PRESETS}

    memory = {}
    for preset in PRESETS:
        out = subprocess.run([sys.executable, __file__, "--child", preset], check=True,
                             capture_output=True, text=True, env=dict(os.environ))
        memory[preset] = json.loads(out.stdout.strip().splitlines()[-1])
        m = memory[preset]
        m["budget_bytes"] = m["float_model_bytes"] + m["largest_layer_bytes"]

    env = environment()
    with open("/proc/loadavg", encoding="utf-8") as f:
        load = " ".join(f.read().split()[:3])
    result = {"machine": env["cpu"], "environment": env, "load_average": load,
              "platform": platform.platform(),
              "processor": platform.processor(), "torch": torch.__version__, "threads": 2,
              "batch": f"32 sentences x {SEQ} tokens", "repeats": args.repeats,
              "variants": rows, "kernels_at_4096_rows": kernels, "sizes": sizes,
              "convert_memory": memory}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "minilm.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "minilm.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(r: dict) -> str:
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    lines = [f"# MiniLM-L6 ({r['batch']}, {r['threads']} threads, median of {r['repeats']} "
             f"interleaved rounds)", "", f"Machine: `{r['machine']}`, torch {r['torch']}, load average "
             f"{r.get('load_average', '?')}.", "",
             "| variant | cosine to float32 | median s | min s | speed vs float32 |",
             "|---|---|---|---|---|"]
    for v in r["variants"]:
        lines.append(f"| {v['variant']} | {v['cosine_to_float32']:.5f} | {v['median_s']:.3f} "
                     f"| {v['min_s']:.3f} | {v['speed_vs_float32']:.2f}x |")
    lines += ["", "Kernels at 4096 rows (layers per kernel):", ""]
    for p, k in r["kernels_at_4096_rows"].items():
        lines.append(f"- {p}: " + "; ".join(f"{n} × {c}" for c, n in k.items()))
    lines += ["", "## Size and convert memory", "",
              "| preset | quantized layers | their float32 | ratio | RSS before convert | "
              "peak during convert | convert extra | budget (float model + largest layer) |",
              "|---|---|---|---|---|---|---|---|"]
    for p, s in r["sizes"].items():
        m = r["convert_memory"][p]
        lines.append(f"| {p} | {mib(s['quantized_layer_bytes'])} | {mib(s['float32_layer_bytes'])}"
                     f" | {s['ratio']:.3f} | {mib(m['rss_before_convert'])} | "
                     f"{mib(m['peak_during_convert'])} | {mib(m['convert_extra_bytes'])} | "
                     f"{mib(m['budget_bytes'])} |")
    lines += ["", "Peak counter: " + next(iter(r["convert_memory"].values()))["peak_counter"]
              + ". RSS includes the Python interpreter, torch and transformers (hundreds of "
              "MiB), so the comparison with the budget is on the extra bytes convert adds."]
    for p, m in r["convert_memory"].items():
        lines.append(f"- {p}: convert added {mib(m['convert_extra_bytes'])} = "
                     f"{m['convert_extra_bytes'] / m['largest_layer_bytes']:.2f}x the largest "
                     f"layer ({mib(m['largest_layer_bytes'])}); peak during convert = RSS before "
                     f"+ {m['convert_extra_bytes'] / m['float_model_bytes']:.2f}x the float "
                     "model's bytes")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
