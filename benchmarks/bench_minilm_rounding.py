"""Benchmark: all-MiniLM-L6-v2 ``w4a8`` embedding cosine, plain rounding vs GPTQ vs AdaRound
(and AdaQuant), block by block over the 6 encoder layers.

Sentences: ``pydoc_sentences`` (English prose from Python's help texts); calibration
``--calib`` sentences (seed 1) in batches of 32, evaluation 256 other sentences (seed 0,
those in the calibration set removed).  Each variant is ``lowbit.quantize_model(model,
"w4a8", calib, algorithms=...)``, converted; the score is the mean cosine between its
sentence embeddings and the float32 model's.  Wall and CPU time of each quantization and the
load average are recorded (shared machine).

Writes ``benchmarks/results/minilm_rounding.json`` and ``.md``.

    nice -n 5 python benchmarks/bench_minilm_rounding.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bench_llm import cpu_model, write_results

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = '[null, {"name": "gptq"}, {"name": "adaround", "iters": 300}, ' \
           '{"name": "adaquant", "iters": 300}]'


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="w4a8")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--variants", default=VARIANTS, help="JSON list: null (plain rounding) "
                    "or an algorithm dict per variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "minilm_rounding"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import lowbit
    from lowbit.zoo.minilm import (encode, load_minilm, mean_cosine, pydoc_sentences,
                                   tokenize_batches)

    model, tok = load_minilm()
    calib_text = pydoc_sentences(args.calib, seed=1)
    held = [s for s in pydoc_sentences(256 + args.calib, seed=0) if s not in set(calib_text)]
    held = held[:256]
    calib = tokenize_batches(tok, calib_text, batch_size=32)
    evals = tokenize_batches(tok, held, batch_size=32)
    ref = encode(model, evals)
    rows = []
    for algo in json.loads(args.variants):
        load0 = list(os.getloadavg())
        wall0, cpu0 = time.perf_counter(), time.process_time()
        q, records = lowbit.quantize_model(model, args.recipe, calib,
                                           algorithms=[algo] if algo else None)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        row = {"variant": "plain rounding" if algo is None else algo["name"],
               "algorithm": algo, "cosine_to_float32": mean_cosine(encode(q, evals), ref),
               "quantize_wall_s": wall, "quantize_cpu_s": cpu,
               "loadavg_before": load0, "loadavg_after": list(os.getloadavg())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": cpu_model(), "model": "all-MiniLM-L6-v2", "recipe": args.recipe,
              "calibration_sentences": args.calib, "eval_sentences": len(held), "rows": rows}
    write_results(Path(args.out), result, markdown)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# all-MiniLM-L6-v2 {r['recipe']}: embedding cosine to float32\n",
             f"CPU: {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}, "
             f"flags {' '.join(m['flags'])}); torch {m['torch']}. {r['calibration_sentences']} "
             f"calibration sentences, {r['eval_sentences']} held-out sentences.\n",
             "| variant | options | cosine to float32 | quantize wall s | CPU s | "
             "load 1-min before→after |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        opts = "" if not row["algorithm"] else ", ".join(
            f"{k}={v}" for k, v in row["algorithm"].items() if k != "name")
        lines.append(f"| {row['variant']} | {opts} | {row['cosine_to_float32']:.5f} | "
                     f"{row['quantize_wall_s']:.1f} | {row['quantize_cpu_s']:.1f} | "
                     f"{row['loadavg_before'][0]:.1f}→{row['loadavg_after'][0]:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
