"""Benchmark: MiniLM-L6 at ``w4a16-g128``, plain rounding (RTN) against GPTQ (and AWQ+GPTQ).

Model: the bundled all-MiniLM-L6-v2 (``lowbit.zoo.minilm``), mean pooled.  Score: mean cosine
between each quantized embedding and the float model's over ``--eval`` pydoc sentences
(``pydoc_sentences(n, seed=0)``).  Calibration: ``--calib`` other pydoc sentences
(``pydoc_sentences(n + calib, seed=1)`` with the evaluation sentences removed), in batches of
32.  Every MiniLM linear layer has 384 or 1536 inputs, multiples of 128, so every one is
quantized.

Writes ``benchmarks/results/minilm_gptq.json`` and ``.md``.

    python benchmarks/bench_minilm_gptq.py [--calib 128 --eval 128]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bench_llm import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"rtn": [], "gptq": ["gptq"], "awq+gptq": ["awq", "gptq"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=128)
    parser.add_argument("--eval", type=int, default=128)
    parser.add_argument("--recipe", default="w4a16-g128")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "minilm_gptq"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import lowbit
    from lowbit.model.batches import call_batch
    from lowbit.zoo.minilm import load_minilm, pydoc_sentences, tokenize_batches

    model, tokenizer = load_minilm()
    held = pydoc_sentences(args.eval)
    calib_text = [s for s in pydoc_sentences(args.eval + args.calib, seed=1)
                  if s not in set(held)][:args.calib]
    evals = tokenize_batches(tokenizer, held, batch_size=32)
    calib = tokenize_batches(tokenizer, calib_text, batch_size=32)

    def embed(m) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([call_batch(m, b).float() for b in evals])

    ref = embed(model)
    rows = []
    for name in args.variants.split(","):
        load0 = os.getloadavg()
        t0, c0 = time.perf_counter(), time.process_time()
        qmodel, records = lowbit.quantize_model(model, args.recipe, calib,
                                                algorithms=VARIANTS[name] or None)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        cos = torch.nn.functional.cosine_similarity(embed(qmodel), ref, dim=1)
        rows.append({"variant": name, "algorithms": VARIANTS[name],
                     "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                     "quantize_seconds": seconds, "quantize_cpu_seconds": cpu,
                     "loadavg_before": list(load0), "loadavg_after": list(os.getloadavg()),
                     "layers_quantized": sum(r.action == "quantized" for r in records),
                     "layers": len(records)})
        print(rows[-1], flush=True)
        write(args, rows, len(calib_text), len(held))  # after every row: a stopped run keeps it


def write(args, rows: list[dict], n_calib: int, n_eval: int) -> None:
    """Write the JSON and Markdown results of the rows measured so far."""
    result = {"machine": cpu_model(), "recipe": args.recipe, "model": "all-MiniLM-L6-v2",
              "calibration_sentences": n_calib, "eval_sentences": n_eval, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [f"# MiniLM-L6 `{args.recipe}`: plain rounding vs GPTQ\n",
             f"CPU: {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}); "
             f"torch {m['torch']}. Calibration {n_calib} pydoc sentences, evaluation "
             f"{n_eval} other ones; score = mean embedding cosine to float.\n",
             "| variant | mean cosine | min cosine | layers quantized | quantize wall s | "
             "CPU s | load avg (1 min) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
                     f"{r['layers_quantized']}/{r['layers']} | {r['quantize_seconds']:.1f} | "
                     f"{r['quantize_cpu_seconds']:.1f} | {r['loadavg_before'][0]:.1f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
