"""Benchmark (a): quantized linear layers on lowbit's kernels against float32 and bfloat16.

For each shape ``K -> N`` and row count ``M`` it times, interleaved round by round (medians;
every ratio is against baselines measured in the same rounds):

* ``float32``  ``F.linear`` of a float32 layer on float32 input;
* ``bfloat16`` ``F.linear`` of a bfloat16 layer on bfloat16 input (a bfloat16 model);
* ``torch.ao dynamic (x86)``  torch.ao's dynamic int8 linear, per-channel weights, x86
  engine (fbgemm: activations quantized per tensor to 7 bits, ``reduce_range``): the peer
  the issue holds ``w8a8`` against at few rows (numerics differ from lowbit's);
* for each format — ``w8`` (int8 per channel, weight-only), ``w8a8`` (int8 per channel ×
  dynamic per-token int8 activations), ``w4`` (int4 groups of 128, weight-only) — every
  integer kernel of its op that runs here (``<fmt>.integer:<kernel>``, timed directly)
  and ``auto`` (the dispatched layer, what users get, tuned afresh in a temporary kernel
  cache unless ``--cache`` names one), float32 input.

Each row also has the process CPU time per call (median; both threads' time, so up to
``threads`` × the wall time): on a shared machine wall time grows with the others' load,
CPU time much less.  The CPU's model, its flags of interest and the ISA settings
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``FBGEMM_ENABLE_INSTRUCTIONS``) are in the
output.

Times are medians (and minima: on a shared machine the minimum is the better estimate of an
undisturbed run) over all calls of all rounds.  An integer kernel whose minimum exceeds
``--give-up`` × float32's at some ``M >= 32`` is not run at larger ``M`` (recorded as
skipped: ``_int_mm`` without VNNI would take minutes at 4096 rows).  Also reported: bytes of each quantized layer (qdata + scale + zero_point) against
its float32 weight, and the targets of the issue, met or missed.  Writes
``benchmarks/results/<name>.json`` and ``<name>.md`` (``--name``, default ``linear``).

    python benchmarks/bench_linear.py                 # full run (minutes on 2 cores)
    python benchmarks/bench_linear.py --quick         # M in {1, 8, 32}, 768->3072 only
    # as on an AVX2-only CPU (fbgemm follows its own variable):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \
        python benchmarks/bench_linear.py --name linear_avx2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.kernels import ActQuantizer, environment, prepare_linear, quant_weight
from lowbit.kernels.dispatch import unusable
from lowbit.kernels.formats import ActFormat
from lowbit.kernels.registry import candidates
from lowbit.primitives.affine import choose_qparams, quantize
from lowbit.primitives.packing import pack_codes
from lowbit.types import PerChannel, PerGroup, Scheme, int4, int8

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = ((768, 3072), (3072, 768), (4096, 4096))
ROWS = (1, 4, 8, 32, 128, 4096)
#: /proc/cpuinfo flags that decide which int8 and bf16 kernels a CPU has
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
         "amx_int8", "amx_bf16")
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")
FORMATS = {  # name -> (qtype, granularity, act)
    "w8": (int8, PerChannel(0), None),
    "w8a8": (int8, PerChannel(0), "dynamic_int8"),
    "w4": (int4, PerGroup(128, 1), None),
}


def quantized(w: torch.Tensor, fmt: str):
    """(qdata, scale, zero_point, qtype, block_size) of ``w`` as lowbit.nn stores it."""
    qtype, gran, _ = FORMATS[fmt]
    qp = choose_qparams(w, qtype, Scheme.SYMMETRIC, gran)
    codes = quantize(w, qp)
    qdata = pack_codes(codes, qtype) if qtype.bits <= 4 else codes
    return qdata, qp.scale, qp.zero_point, qtype, qp.block_size


def time_block(fn, budget_s: float) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of each call, calls repeated until ``budget_s`` has
    passed (at least one)."""
    times, cpu, start = [], [], time.perf_counter()
    while True:
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.process_time()
        times.append(t1 - t0)
        cpu.append(c1 - c0)
        if t1 - start >= budget_s:
            return times, cpu


def torch_ao_dynamic(w: torch.Tensor, bias: torch.Tensor):
    """torch.ao's dynamic int8 linear (per-channel weights, x86 engine), as users build it."""
    from torch import nn
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    linear = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        model = quantize_dynamic(nn.Sequential(linear), {nn.Linear: per_channel_dynamic_qconfig},
                                 dtype=torch.qint8)
    return lambda x: model(x)


def cpu_flags() -> dict:
    """This CPU's flags of interest (:data:`FLAGS`), torch's CPU capability and the ISA
    environment variables."""
    flags = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"flags": [f for f in FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_env": {k: os.environ[k] for k in ISA_ENV if k in os.environ}}


def _paths_for(fmt: str, w: torch.Tensor, act_impl: str):
    """``{path name: (callable(x, bias), describe(m))}`` for one format: every usable integer
    kernel of its op (timed directly) and the dispatched layer (``auto``)."""
    qtype, _, act = FORMATS[fmt]
    args = quantized(w, fmt)
    auto = prepare_linear(*args, act=act, act_impl=act_impl)
    weight = quant_weight(*args)
    aq = None if act is None else ActQuantizer(act, act_impl)
    paths = {f"{fmt}.auto": (auto, lambda m: auto.plan.select(m).describe())}
    for impl in candidates(auto.op, "integer", "cpu"):
        if unusable(impl, weight, ActFormat.from_mode(act)) is not None:
            continue
        state = impl.prepare(weight, impl.compute_dtypes[0])
        run = (lambda x, b, impl=impl, state=state: impl.run(state, x, b, aq))
        label = f"{impl.name}[{str(impl.compute_dtypes[0]).replace('torch.', '')}]"
        paths[f"{fmt}.integer:{impl.name}"] = (run, lambda m, label=label: label)
    return paths, auto.memory()["stored"]


def run_shape(k: int, n: int, rows, rounds: int, give_up: float, budget_s: float, act_impl,
              formats=tuple(FORMATS)):
    """All paths for one shape; returns result rows and byte counts."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    bias = torch.randn(n, generator=gen) * 0.1
    w_bf, b_bf = w.bfloat16(), bias.bfloat16()
    layers, nbytes = {}, {}
    dynamic = torch_ao_dynamic(w, bias)
    for fmt in formats:
        paths, stored = _paths_for(fmt, w, act_impl)
        layers.update(paths)
        nbytes[fmt] = {"stored": stored, "float32": w.numel() * 4,
                       "ratio": stored / (w.numel() * 4)}
    out, slow = [], set()
    for m in rows:
        x = torch.randn(m, k, generator=gen)
        x_bf = x.bfloat16()
        paths = {"float32": lambda: F.linear(x, w, bias),
                 "bfloat16": lambda: F.linear(x_bf, w_bf, b_bf),
                 "torch.ao dynamic (x86)": lambda: dynamic(x)}
        for name, (fn, _) in layers.items():
            if name not in slow:
                paths[name] = (lambda fn=fn: fn(x, bias))
        for fn in paths.values():  # warm up: dense weights, first-call costs
            fn()
        times = {name: [] for name in paths}
        cpu = {name: [] for name in paths}
        for _ in range(rounds):  # interleaved: every path once per round
            for name, fn in paths.items():
                wall, proc = time_block(fn, budget_s)
                times[name] += wall
                cpu[name] += proc
        med = {name: statistics.median(t) for name, t in times.items()}
        low = {name: min(t) for name, t in times.items()}
        best, best_low = min(med["float32"], med["bfloat16"]), min(low["float32"], low["bfloat16"])
        for name, t in med.items():
            out.append({"K": k, "N": n, "M": m, "path": name, "median_ms": t * 1e3,
                        "min_ms": low[name] * 1e3, "calls": len(times[name]),
                        "cpu_ms": statistics.median(cpu[name]) * 1e3,
                        "x_dynamic": med["torch.ao dynamic (x86)"] / t,
                        "x_dynamic_min": low["torch.ao dynamic (x86)"] / low[name],
                        "x_float32": med["float32"] / t, "x_bfloat16": med["bfloat16"] / t,
                        "x_best_float": best / t, "x_best_float_min": best_low / low[name],
                        "x_float32_min": low["float32"] / low[name],
                        "kernel": layers[name][1](m) if name in layers else None})
            if ".integer:" in name and m >= 32 and low[name] > give_up * low["float32"]:
                slow.add(name)
                out.append({"K": k, "N": n, "M": m, "path": name, "skipped":
                            f"min > {give_up}x float32 at M={m}; not run at larger M"})
        print(f"  {k}->{n} M={m}: " + ", ".join(
            f"{p} {t * 1e3:.3g}ms (min {low[p] * 1e3:.3g})" for p, t in med.items()), flush=True)
    return out, nbytes, {}


def targets(rows: list[dict], nbytes: dict) -> list[dict]:
    """The issue's targets on the dispatched layers (``auto``), each with the ratio from
    medians and from minima, met (on the median) or missed."""
    found = []
    timed = [r for r in rows if "median_ms" in r and r["path"].endswith(".auto")]

    def add(text, r, key, goal):
        found.append({"target": f"{text} ({r['K']}->{r['N']})", "value": round(r[key], 3),
                      "value_min": round(r[key + "_min"], 3), "met": r[key] >= goal})

    for r in timed:
        if r["path"] == "w8a8.auto" and r["M"] <= 8:
            add(f"w8a8 >= 0.9x torch.ao dynamic (x86) at M={r['M']}", r, "x_dynamic", 0.9)
        if r["path"] == "w4.auto" and r["M"] == 1:
            add("w4-g128 >= 3x float32 at M=1", r, "x_float32", 3)
    for r in timed:
        add(f"{r['path']} >= 0.95x best float at M={r['M']}", r, "x_best_float", 0.95)
    for shape, per_fmt in nbytes.items():
        if "w4" not in per_fmt:
            continue
        ratio = per_fmt["w4"]["ratio"]
        found.append({"target": f"w4-g128 bytes <= 0.16x float32 ({shape})",
                      "value": round(ratio, 4), "value_min": round(ratio, 4), "met": ratio <= 0.16})
    return found


def winners(rows: list[dict]) -> list[dict]:
    """Per (shape, M): the fastest float path, the fastest ``w8a8`` integer kernel (median)
    and what ``w8a8.auto`` chose."""
    out = []
    timed = [r for r in rows if "median_ms" in r]
    for key in dict.fromkeys((r["K"], r["N"], r["M"]) for r in timed):
        at = [r for r in timed if (r["K"], r["N"], r["M"]) == key]
        ints = [r for r in at if r["path"].startswith("w8a8.integer:")]
        auto = next((r for r in at if r["path"] == "w8a8.auto"), None)
        best_float = min((r for r in at if r["path"] in ("float32", "bfloat16")),
                         key=lambda r: r["median_ms"])
        best_int = min(ints, key=lambda r: r["median_ms"]) if ints else None
        out.append({"K": key[0], "N": key[1], "M": key[2], "best_float": best_float["path"],
                    "best_w8a8_kernel": best_int["path"].split(":", 1)[1] if best_int else None,
                    "best_w8a8_ms": best_int["median_ms"] if best_int else None,
                    "auto_kernel": auto["kernel"] if auto else None,
                    "auto_x_best_float": auto["x_best_float"] if auto else None,
                    "auto_x_dynamic": auto["x_dynamic"] if auto else None})
    return out


def markdown(meta: dict, rows: list[dict], nbytes: dict, found: list[dict]) -> str:
    """The results as Markdown tables."""
    isa = meta["cpu_flags"]
    env = ", ".join(f"{k}={v}" for k, v in isa["isa_env"].items()) or "none"
    lines = [f"# bench_linear ({meta['machine']}, {meta['threads']} threads, torch "
             f"{meta['torch']}, load {meta['loadavg_start'][0]:.1f} -> "
             f"{meta['loadavg_end'][0]:.1f})", "",
             f"CPU flags: {' '.join(isa['flags'])}; torch CPU capability "
             f"{isa['torch_cpu_capability']}; ISA environment: {env}; nice {meta['nice']}; "
             f"process CPU {meta['process_cpu_s']:.0f} s over {meta['wall_s']:.0f} s wall.", "",
             "Median ms per call over interleaved rounds (min in brackets); `x f32`, `x best`, "
             "`x dyn` = float32's time, the faster of float32 and bfloat16's, torch.ao "
             "dynamic (x86)'s, over this path's (medians; minima in brackets); `cpu ms` = "
             "median process CPU time per call (all threads).", "",
             "| K->N | M | float32 ms | bf16 ms | dyn ms | path | ms | cpu ms | x f32 | x best "
             "| x dyn | kernel |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["K"], r["N"], r["M"], r["path"]): r for r in rows if "median_ms" in r}
    for r in rows:
        if r["path"] in ("float32", "bfloat16", "torch.ao dynamic (x86)"):
            continue
        if "skipped" in r:
            lines.append(f"| {r['K']}->{r['N']} | >{r['M']} | | | | {r['path']} | skipped | "
                         f"| | | | {r['skipped']} |")
            continue
        key = (r["K"], r["N"], r["M"])
        f32, bf = base[key + ("float32",)], base[key + ("bfloat16",)]
        dyn = base[key + ("torch.ao dynamic (x86)",)]
        lines.append(
            f"| {r['K']}->{r['N']} | {r['M']} | {f32['median_ms']:.3g} ({f32['min_ms']:.3g}) | "
            f"{bf['median_ms']:.3g} ({bf['min_ms']:.3g}) | {dyn['median_ms']:.3g} "
            f"({dyn['min_ms']:.3g}) | {r['path']} | {r['median_ms']:.3g} "
            f"({r['min_ms']:.3g}) | {r['cpu_ms']:.3g} | {r['x_float32']:.2f} "
            f"({r['x_float32_min']:.2f}) | {r['x_best_float']:.2f} ({r['x_best_float_min']:.2f})"
            f" | {r['x_dynamic']:.2f} ({r['x_dynamic_min']:.2f}) | {r['kernel']} |")
    lines += ["", "Who won (medians): the fastest float path, the fastest `w8a8` integer kernel "
              "timed directly, and what `w8a8.auto` chose.", "",
              "| K->N | M | best float | fastest w8a8 kernel | ms | w8a8.auto chose | auto x best "
              "float | auto x dyn |", "|---|---|---|---|---|---|---|---|"]
    for w in meta["winners"]:
        ms = "" if w["best_w8a8_ms"] is None else f"{w['best_w8a8_ms']:.3g}"
        xb = "" if w["auto_x_best_float"] is None else f"{w['auto_x_best_float']:.2f}"
        xd = "" if w["auto_x_dynamic"] is None else f"{w['auto_x_dynamic']:.2f}"
        lines.append(f"| {w['K']}->{w['N']} | {w['M']} | {w['best_float']} | "
                     f"{w['best_w8a8_kernel']} | {ms} | {w['auto_kernel']} | {xb} | {xd} |")
    lines += ["", "| layer | format | stored bytes | float32 bytes | ratio |",
              "|---|---|---|---|---|"]
    for shape, per_fmt in nbytes.items():
        for fmt, b in per_fmt.items():
            lines.append(f"| {shape} | {fmt} | {b['stored']} | {b['float32']} | "
                         f"{b['ratio']:.4f} |")
    lines += ["", "| target | value (median) | value (min) | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['value_min']} | "
              f"{'yes' if t['met'] else 'NO'} |" for t in found]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M in {1, 8, 32}, one shape")
    parser.add_argument("--rows", type=int, nargs="*", help="row counts M to time")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per timed block")
    parser.add_argument("--give-up", type=float, default=10.0,
                        help="from M=32, skip an integer kernel at larger M once its minimum is "
                             "this many times float32's")
    parser.add_argument("--act-impl", default="eager", choices=("eager", "compile"))
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (2: the target machine; 1 is steadier on a busy one)")
    parser.add_argument("--shapes", nargs="*", help="K->N shapes, e.g. 4096->4096")
    parser.add_argument("--formats", nargs="*", choices=tuple(FORMATS), default=list(FORMATS),
                        help="lowbit formats to time (default: all)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="kernel tuning cache directory (default: a fresh temporary one, "
                             "so that auto measures every candidate in this run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="linear",
                        help="file stem of the results (e.g. linear_avx2 for an ISA-capped run)")
    args = parser.parse_args(argv)
    os.environ["LOWBIT_CACHE"] = str(args.cache or tempfile.mkdtemp(prefix="bench-linear-"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in text.split("->")) for text in args.shapes]
    rows = args.rows or ((1, 8, 32) if args.quick else ROWS)
    meta = {"torch": torch.__version__, "machine": environment()["cpu"], "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
            "nice": os.nice(0), "rounds": args.rounds,
            "act_impl": args.act_impl, "loadavg_start": os.getloadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    all_rows, all_bytes, errors = [], {}, {}
    for k, n in shapes:
        print(f"{k}->{n}", flush=True)
        r, b, e = run_shape(k, n, rows, args.rounds, args.give_up, args.budget, args.act_impl,
                            args.formats)
        all_rows += r
        all_bytes[f"{k}->{n}"] = b
        errors.update({f"{k}->{n} {p}": msg for p, msg in e.items()})
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"], meta["process_cpu_s"] = time.perf_counter() - wall0, time.process_time() - cpu0
    meta["winners"] = winners(all_rows)
    found = targets(all_rows, all_bytes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "results": all_rows, "bytes": all_bytes, "targets": found,
         "errors": errors}, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(meta, all_rows, all_bytes, found))
    print(f"wrote {args.out / args.name}.json and .md; "
          f"{sum(t['met'] for t in found)}/{len(found)} targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
