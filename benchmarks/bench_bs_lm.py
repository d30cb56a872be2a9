"""Benchmark: the Birman–Schwinger character LM and core, float vs ptq/qat int8/int4 (group 128).

Model: the float LM in ``tests/fixtures/bs_lm`` (made by ``benchmarks/train_bs_lm.py``; pass
``--train`` to train a fresh one here first). Text: ``pydoc_data.topics``; perplexity is measured
on every 128-character window of the held-out last 10 %, never trained on.

Per mode (``lowbit.zoo.birman_schwinger_quant.birman_schwinger_recipe``, group size 128):
``lowbit.prepare`` → ``lowbit.calibrate`` on ``--calib-batches`` batches of 16 random training
windows → for ``qat_*``: ``--qat-steps`` steps of QAT (fake-quant forward, straight-through
gradients, AdamW lr ``--qat-lr``) → ``lowbit.convert`` (integer storage) → held-out perplexity,
model size (``lowbit.estimate_model_size``) and the speed ratio float/quantized (median of
``--repeats`` forwards of one batch of 32 windows, two threads, variants interleaved). The QAT
modes get extra training steps, so the float model is also fine-tuned for the same steps and
learning rate ("float + same steps"), the fair baseline for them.

Core alone: :class:`QuantizedBirmanSchwingerCore` around (a) the trained LM's first core, fed
the potentials that LM computes on training text (calibration) and on held-out text
(measurement), and (b) a seed-0 random core with smooth random potentials. Reported: the relative
errors ``‖G_q − G‖ / ‖G‖`` of the real and imaginary parts after ``apply_ptq`` and the
compression ratio.

Writes ``benchmarks/results/bs_lm.json`` and ``bs_lm.md``; names the CPU.

    python benchmarks/bench_bs_lm.py [--train] [--qat-steps 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import lowbit
from lowbit.zoo.birman_schwinger import potential_batches
from lowbit.zoo.birman_schwinger_lm import (lm_windows, load_lm, perplexity, text_splits,
                                            train_lm)
from lowbit.zoo.birman_schwinger_quant import (MODES, birman_schwinger_recipe,
                                               create_quantized_birman_schwinger)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIXTURE = ROOT / "tests" / "fixtures" / "bs_lm"
TARGETS = {"ptq_int8": "rise < 5 %", "qat_int8": "within 2 % of float",
           "ptq_int4": "rise < 15 %", "qat_int4": "better than ptq_int4"}


def machine() -> dict:
    """CPU model name, core count and the instruction-set flags that change int8 speed."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"cpu": name or platform.processor(), "cores": os.cpu_count(),
            "flags": [f for f in wanted if f in flags], "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _median_ms(models: dict, inputs: torch.Tensor, repeats: int) -> dict:
    times = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(inputs)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(inputs)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def quantize_lm(float_lm, mode: str, calib, qat_batches, qat_lr: float):
    qmodel = lowbit.prepare(float_lm, birman_schwinger_recipe(mode, 128, causal=True))
    with lowbit.calibrate(qmodel):
        for inputs, _ in calib:
            qmodel(inputs)
    if mode.startswith("qat"):
        train_lm(qmodel, qat_batches, lr=qat_lr, warmup=10)
    return lowbit.convert(qmodel, inplace=True)


def core_errors(core, calib, held_out) -> dict:
    out = {}
    for mode in ("ptq_int8", "ptq_int4"):
        q = create_quantized_birman_schwinger(core.n_seq, mode, core.epsilon, 128, core=core)
        q.start_calibration()
        for v in calib:
            q(v)
        q.end_calibration()
        q.apply_ptq()
        q.eval()
        real, imag = [], []
        for v in held_out:
            _, diag = q(v, return_diagnostics=True)
            real.append(diag["G_real_quantization_error"])
            imag.append(diag["G_imag_quantization_error"])
        size = q.estimate_model_size()
        out[mode] = {"G_real_relative_error": statistics.mean(real),
                     "G_imag_relative_error": statistics.mean(imag),
                     "v_relative_error": diag["v_quantization_error"],
                     "compression_ratio": size["compression_ratio"],
                     "fp32_bytes": size["fp32_bytes"], "quantized_bytes": size["quantized_bytes"]}
    return out


def lm_potentials(lm, batches) -> list[torch.Tensor]:
    """The potentials (B·H, n_seq) the LM's first core receives on ``batches``."""
    seen = []
    handle = lm.blocks[0].core.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        for inputs, _ in batches:
            lm(inputs)
    handle.remove()
    return [v.detach().clone() for v in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="train a fresh float LM first")
    parser.add_argument("--calib-batches", type=int, default=16)
    parser.add_argument("--qat-steps", type=int, default=100)
    parser.add_argument("--qat-lr", type=float, default=5e-4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()

    fixture = FIXTURE
    if args.train:
        import subprocess
        fixture = RESULTS / "bs_lm_trained"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_bs_lm.py"),
                        "--out", str(fixture)], check=True)
    float_lm = load_lm(fixture)
    train_info = json.loads((fixture / "config.json").read_text())
    train_ids, test_ids = text_splits()
    n_seq = float_lm.n_seq
    held_out = lm_windows(test_ids, n_seq, batch=32)
    calib = lm_windows(train_ids, n_seq, batch=16, n_batches=args.calib_batches, seed=1)
    qat_batches = lm_windows(train_ids, n_seq, batch=16, n_batches=args.qat_steps, seed=2)

    float_ppl = perplexity(float_lm, held_out)
    float_ft = copy.deepcopy(float_lm)
    train_lm(float_ft, qat_batches, lr=args.qat_lr, warmup=10)
    float_ft_ppl = perplexity(float_ft, held_out)
    float_size = lowbit.estimate_model_size(float_lm)["float_bytes"]

    models, rows = {"float": float_lm}, {}
    for mode in MODES:
        qmodel = quantize_lm(float_lm, mode, calib, qat_batches, args.qat_lr)
        ppl = perplexity(qmodel, held_out)
        size = lowbit.estimate_model_size(qmodel)
        baseline = float_ft_ppl if mode.startswith("qat") else float_ppl
        rows[mode] = {"perplexity": ppl, "rise_vs_float_pct": 100 * (ppl / float_ppl - 1),
                      "rise_vs_baseline_pct": 100 * (ppl / baseline - 1),
                      "quantized_bytes": size["quantized_bytes"],
                      "compression_ratio": size["compression_ratio"],
                      "target": TARGETS[mode]}
        models[mode] = qmodel
    latency = _median_ms(models, held_out[0][0], args.repeats)
    for mode in MODES:
        rows[mode]["median_ms"] = latency[mode]
        rows[mode]["speed_ratio_vs_float"] = latency["float"] / latency[mode]
    rows["ptq_int8"]["target_met"] = rows["ptq_int8"]["rise_vs_float_pct"] < 5
    rows["qat_int8"]["target_met"] = rows["qat_int8"]["rise_vs_float_pct"] < 2  # at most 2 % worse
    rows["ptq_int4"]["target_met"] = rows["ptq_int4"]["rise_vs_float_pct"] < 15
    rows["qat_int4"]["target_met"] = rows["qat_int4"]["perplexity"] < rows["ptq_int4"]["perplexity"]

    lm_core = float_lm.blocks[0].core
    core = {
        "lm_block0": core_errors(lm_core, lm_potentials(float_lm, calib[:4]),
                                 lm_potentials(float_lm, held_out[:4])),
        "random_core": core_errors(type(lm_core)(n_seq, 1.0, seed=0),
                                   potential_batches(8, 16, n_seq, seed=0),
                                   potential_batches(4, 16, n_seq, seed=99)),
    }
    for variant in core.values():
        variant["ptq_int8"]["target_met"] = max(variant["ptq_int8"]["G_real_relative_error"],
                                                variant["ptq_int8"]["G_imag_relative_error"]) < 0.05
        variant["ptq_int4"]["target_met"] = max(variant["ptq_int4"]["G_real_relative_error"],
                                                variant["ptq_int4"]["G_imag_relative_error"]) < 0.15

    result = {"machine": machine(), "fixture": str(fixture.relative_to(ROOT)),
              "training": train_info, "held_out_windows": sum(len(b[0]) for b in held_out),
              "float": {"perplexity": float_ppl, "bytes": float_size,
                        "median_ms": latency["float"]},
              "float_same_steps": {"perplexity": float_ft_ppl, "steps": args.qat_steps,
                                   "lr": args.qat_lr},
              "modes": rows, "core": core, "args": vars(args),
              "seconds": round(time.perf_counter() - started, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bs_lm.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "bs_lm.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Birman–Schwinger LM: float vs quantized ({m['cpu']}, {m['cores']} cores, "
             f"flags {', '.join(m['flags']) or 'none'}; torch {m['torch']}, Python {m['python']})",
             "", f"Held-out perplexity over {r['held_out_windows']} windows of 128 characters "
             f"(pydoc_data.topics, last 10 %). Float: **{r['float']['perplexity']:.3f}**; float "
             f"fine-tuned for the QAT steps ({r['float_same_steps']['steps']}): "
             f"{r['float_same_steps']['perplexity']:.3f}.", "",
             "| mode | perplexity | vs float | vs fair baseline | target | met | size ratio "
             "| speed vs float |", "|---|---|---|---|---|---|---|---|"]
    for mode, row in r["modes"].items():
        lines.append(f"| `{mode}` | {row['perplexity']:.3f} | {row['rise_vs_float_pct']:+.2f} % "
                     f"| {row['rise_vs_baseline_pct']:+.2f} % | {row['target']} | "
                     f"{'yes' if row['target_met'] else 'NO'} | {row['compression_ratio']:.2f}x "
                     f"| {row['speed_ratio_vs_float']:.2f}x |")
    lines += ["", "Core alone, relative output error after `apply_ptq` (targets: < 5 % int8, "
              "< 15 % int4):", "", "| core | mode | ‖ΔRe G‖/‖Re G‖ | ‖ΔIm G‖/‖Im G‖ | met "
              "| compression |", "|---|---|---|---|---|---|"]
    for variant, modes in r["core"].items():
        for mode, row in modes.items():
            lines.append(f"| {variant} | `{mode}` | {100 * row['G_real_relative_error']:.2f} % "
                         f"| {100 * row['G_imag_relative_error']:.2f} % | "
                         f"{'yes' if row['target_met'] else 'NO'} | "
                         f"{row['compression_ratio']:.2f}x |")
    lines += ["", f"Generated by `python benchmarks/bench_bs_lm.py` in {r['seconds']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
