"""Benchmark (a): quantized linear layers on lowbit's kernels against float32 and bfloat16.

For each shape ``K -> N`` and row count ``M`` it times, interleaved round by round (medians;
every ratio is against baselines measured in the same rounds):

* ``float32``  ``F.linear`` of a float32 layer on float32 input;
* ``bfloat16`` ``F.linear`` of a bfloat16 layer on bfloat16 input (a bfloat16 model);
* for each format — ``w8`` (int8 per channel, weight-only), ``w8a8`` (int8 per channel ×
  dynamic per-token int8 activations), ``w4`` (int4 groups of 128, weight-only) — every
  integer kernel of its op that runs here (``<fmt>.integer:<kernel>``, timed directly)
  and ``auto`` (the dispatched layer, what users get), float32 input.

Times are medians (and minima: on a shared machine the minimum is the better estimate of an
undisturbed run) over all calls of all rounds.  An integer kernel whose minimum exceeds
``--give-up`` × float32's at some ``M >= 32`` is not run at larger ``M`` (recorded as
skipped: ``_int_mm`` without VNNI would take minutes at 4096 rows).  Also reported: bytes of each quantized layer (qdata + scale + zero_point) against
its float32 weight, and the targets of the issue, met or missed.  Writes
``benchmarks/results/linear.json`` and ``linear.md``.

    python benchmarks/bench_linear.py                 # full run (minutes on 2 cores)
    python benchmarks/bench_linear.py --quick         # M in {1, 8, 32}, 768->3072 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
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
ROWS = (1, 8, 32, 128, 512, 4096)
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


def time_block(fn, budget_s: float) -> list[float]:
    """Seconds of each call, calls repeated until ``budget_s`` has passed (at least one)."""
    times, start = [], time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 - start >= budget_s:
            return times


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


def run_shape(k: int, n: int, rows, rounds: int, give_up: float, budget_s: float, act_impl):
    """All paths for one shape; returns result rows and byte counts."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen) / k ** 0.5
    bias = torch.randn(n, generator=gen) * 0.1
    w_bf, b_bf = w.bfloat16(), bias.bfloat16()
    layers, nbytes = {}, {}
    for fmt in FORMATS:
        paths, stored = _paths_for(fmt, w, act_impl)
        layers.update(paths)
        nbytes[fmt] = {"stored": stored, "float32": w.numel() * 4,
                       "ratio": stored / (w.numel() * 4)}
    out, slow = [], set()
    for m in rows:
        x = torch.randn(m, k, generator=gen)
        x_bf = x.bfloat16()
        paths = {"float32": lambda: F.linear(x, w, bias),
                 "bfloat16": lambda: F.linear(x_bf, w_bf, b_bf)}
        for name, (fn, _) in layers.items():
            if name not in slow:
                paths[name] = (lambda fn=fn: fn(x, bias))
        for fn in paths.values():  # warm up: dense weights, first-call costs
            fn()
        times = {name: [] for name in paths}
        for _ in range(rounds):  # interleaved: every path once per round
            for name, fn in paths.items():
                times[name] += time_block(fn, budget_s)
        med = {name: statistics.median(t) for name, t in times.items()}
        low = {name: min(t) for name, t in times.items()}
        best, best_low = min(med["float32"], med["bfloat16"]), min(low["float32"], low["bfloat16"])
        for name, t in med.items():
            out.append({"K": k, "N": n, "M": m, "path": name, "median_ms": t * 1e3,
                        "min_ms": low[name] * 1e3, "calls": len(times[name]),
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
            add(f"w8a8 >= 4x float32 at M={r['M']}", r, "x_float32", 4)
        if r["path"] == "w4.auto" and r["M"] == 1:
            add("w4-g128 >= 3x float32 at M=1", r, "x_float32", 3)
    for r in timed:
        add(f"{r['path']} >= 0.95x best float at M={r['M']}", r, "x_best_float", 0.95)
    for shape, per_fmt in nbytes.items():
        ratio = per_fmt["w4"]["ratio"]
        found.append({"target": f"w4-g128 bytes <= 0.16x float32 ({shape})",
                      "value": round(ratio, 4), "value_min": round(ratio, 4), "met": ratio <= 0.16})
    return found


def markdown(meta: dict, rows: list[dict], nbytes: dict, found: list[dict]) -> str:
    """The results as Markdown tables."""
    lines = [f"# bench_linear ({meta['machine']}, {meta['threads']} threads, torch "
             f"{meta['torch']}, load {meta['loadavg_start'][0]:.1f} -> "
             f"{meta['loadavg_end'][0]:.1f})", "",
             "Median ms per call over interleaved rounds (min in brackets); `x f32`, `x best` = "
             "float32's time, or the faster of float32 and bfloat16's, over this path's "
             "(medians; minima in brackets).", "",
             "| K->N | M | float32 ms | bf16 ms | path | ms | x f32 | x best | kernel |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {(r["K"], r["N"], r["M"], r["path"]): r for r in rows if "median_ms" in r}
    for r in rows:
        if r["path"] in ("float32", "bfloat16"):
            continue
        if "skipped" in r:
            lines.append(f"| {r['K']}->{r['N']} | >{r['M']} | | | {r['path']} | skipped | | | "
                         f"{r['skipped']} |")
            continue
        key = (r["K"], r["N"], r["M"])
        f32, bf = base[key + ("float32",)], base[key + ("bfloat16",)]
        lines.append(
            f"| {r['K']}->{r['N']} | {r['M']} | {f32['median_ms']:.3g} ({f32['min_ms']:.3g}) | "
            f"{bf['median_ms']:.3g} ({bf['min_ms']:.3g}) | {r['path']} | {r['median_ms']:.3g} "
            f"({r['min_ms']:.3g}) | {r['x_float32']:.2f} ({r['x_float32_min']:.2f}) | "
            f"{r['x_best_float']:.2f} ({r['x_best_float_min']:.2f}) | {r['kernel']} |")
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
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in text.split("->")) for text in args.shapes]
    rows = args.rows or ((1, 8, 32) if args.quick else ROWS)
    meta = {"torch": torch.__version__, "machine": environment()["cpu"], "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "rounds": args.rounds,
            "act_impl": args.act_impl, "loadavg_start": os.getloadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    all_rows, all_bytes, errors = [], {}, {}
    for k, n in shapes:
        print(f"{k}->{n}", flush=True)
        r, b, e = run_shape(k, n, rows, args.rounds, args.give_up, args.budget, args.act_impl)
        all_rows += r
        all_bytes[f"{k}->{n}"] = b
        errors.update({f"{k}->{n} {p}": msg for p, msg in e.items()})
    meta["loadavg_end"] = os.getloadavg()
    found = targets(all_rows, all_bytes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "linear.json").write_text(json.dumps(
        {"meta": meta, "results": all_rows, "bytes": all_bytes, "targets": found,
         "errors": errors}, indent=1))
    (args.out / "linear.md").write_text(markdown(meta, all_rows, all_bytes, found))
    print(f"wrote {args.out / 'linear.json'} and linear.md; "
          f"{sum(t['met'] for t in found)}/{len(found)} targets met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
