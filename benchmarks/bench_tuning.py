"""How long ``auto`` kernel tuning takes on MiniLM-L6, and what it chose.

For each preset, the converted MiniLM's every linear layer decides all 13 row buckets
(``lowbit.tune_kernels``) into an empty cache: the time is the cost a user pays once per
machine; a second call reads the cache.  Writes ``benchmarks/results/tuning.json`` and
``tuning.md`` with the CPU (model, flags), torch version and threads.

    python benchmarks/bench_tuning.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("w8a8", "w8a16", "w4a16-g128")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["LOWBIT_CACHE"] = tempfile.mkdtemp(prefix="lowbit-tuning-bench-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    import lowbit
    from lowbit.kernels import environment
    from lowbit.zoo.minilm import load_minilm, pydoc_sentences, tokenize_batches

    model, tok = load_minilm()
    calib = tokenize_batches(tok, pydoc_sentences(16, seed=1), batch_size=8)
    rows = []
    for preset in PRESETS:
        qmodel, _ = lowbit.quantize_model(model, preset, calib)
        t0 = time.perf_counter()
        lowbit.tune_kernels(qmodel)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        lowbit.tune_kernels(qmodel)
        cached = time.perf_counter() - t0
        ffn = next(r for r in lowbit.lowbit_state(qmodel).records
                   if r.name.endswith("layer.0.intermediate.dense"))
        rows.append({"preset": preset, "tune_s": round(first, 2), "cached_s": round(cached, 3),
                     "ffn_up_kernels": ffn.kernel})
        print(f"{preset}: tuned in {first:.1f} s, cached {cached:.3f} s")
    env = environment()
    from lowbit.kernels.tuning import _cpu_info
    env["cpu_flags"] = [f for f in _cpu_info()[1].split() if f.startswith(("avx", "amx", "fma"))]
    with open("/proc/loadavg", encoding="utf-8") as f:
        load = f.read().split()[:3]
    result = {"environment": env, "threads": args.threads, "load_average": load, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tuning.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Kernel tuning time, MiniLM-L6 ({env['cpu']}, torch {env['torch']}, "
             f"{args.threads} threads, load average {' '.join(load)})", "",
             f"CPU flags: {' '.join(env['cpu_flags'])}", "",
             "| preset | tune all buckets (s) | again, from cache (s) |", "|---|---|---|"]
    lines += [f"| {r['preset']} | {r['tune_s']} | {r['cached_s']} |" for r in rows]
    lines += ["", "Kernels chosen for layer 0's FFN up-projection (384 -> 1536):", ""]
    lines += [f"- `{r['preset']}`: {r['ffn_up_kernels']}" for r in rows]
    (RESULTS / "tuning.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
