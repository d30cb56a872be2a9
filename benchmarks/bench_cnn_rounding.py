"""Benchmark: learned rounding on a CNN, layer by layer: per-channel W{bits}A8 test accuracy
with plain rounding, AdaRound and AdaQuant, and the share of the plain-rounding gap each
recovers.

Model: ``--model mobilenet`` (default) is the MobileNet-style digits CNN of
``lowbit.zoo.mobilenet_digits`` (depthwise-separable convs with BatchNorm, left unfolded
here, and ReLU6; its fixed calibration and test splits); ``--model digits`` is the small
digits CNN whose trained weights the tests use
(``tests/fixtures/digits_cnn_seed0.safetensors``, sklearn's digits, 8×8 images).
Recipe: symmetric per-output-channel int``bits`` weights (min/max range) and int8 affine
per-tensor calibrated activations on every Conv/Linear.  Calibration: ``--calib`` batches of
32 train images, the same for every variant; accuracy on the held-out test split.  The
learned variants run layer by layer (``blocks="layers"``: each layer is fitted to the float
model's output of that layer, its inputs coming from the already quantized layers before
it).  Gap recovered = (acc − plain) / (float − plain).  Wall and CPU time per variant and the
load average are recorded (shared machine).

Writes ``benchmarks/results/cnn_rounding.json`` and ``.md``.

    nice -n 5 python benchmarks/bench_cnn_rounding.py --bits 2,3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from bench_llm import cpu_model, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ALGOS = '[{"name": "adaround", "iters": 500}, {"name": "adaquant", "iters": 500}]'


def digits_model():
    """``(model, calib batches builder, accuracy fn)`` for the digits CNN fixture."""
    from safetensors.torch import load_file

    from lowbit.zoo.digits import DigitsCNN, accuracy, calibration_batches, load_digits_split

    model = DigitsCNN()
    model.load_state_dict(load_file(str(ROOT / "tests/fixtures/digits_cnn_seed0.safetensors")))
    model.eval()
    data = load_digits_split(seed=0)
    return (model, lambda n: list(calibration_batches(data, n)),
            lambda m: accuracy(m, data.x_test, data.y_test))


def mobilenet_model():
    """``(model, calib batches builder, accuracy fn)`` for the MobileNet-style digits CNN
    (weights shipped in ``lowbit.zoo``; its fixed calibration and test splits)."""
    from lowbit.zoo.digits import accuracy
    from lowbit.zoo.mobilenet_digits import load_mobilenet_digits, load_trained_mobilenet_digits

    data = load_mobilenet_digits()
    return (load_trained_mobilenet_digits(),
            lambda n: list(data.x_calib[:32 * n].split(32)),
            lambda m: accuracy(m, data.x_test, data.y_test))


def recipe(bits: int):
    from lowbit.config import LayerConfig, QuantSpec
    from lowbit.presets import linear_conv_recipe
    from lowbit.types import PerChannel, PerTensor, Scheme, int8, qtype_from_name

    w = QuantSpec(qtype=qtype_from_name(f"int{bits}"), scheme=Scheme.SYMMETRIC,
                  granularity=PerChannel(0), method="minmax")
    a = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor(), method="minmax")
    return linear_conv_recipe(f"w{bits}a8-per-channel", LayerConfig(w, a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet", choices=["mobilenet", "digits"])
    ap.add_argument("--bits", default="2,3")
    ap.add_argument("--calib", type=int, default=8, help="batches of 32 images")
    ap.add_argument("--algos", default=ALGOS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "cnn_rounding"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import lowbit

    model, calib_of, acc = (mobilenet_model if args.model == "mobilenet" else digits_model)()
    calib = calib_of(args.calib)
    float_acc = acc(model)
    rows = []
    for bits in [int(b) for b in args.bits.split(",")]:
        rec = recipe(bits)
        plain = None
        for algo in [None] + json.loads(args.algos):
            load0 = list(os.getloadavg())
            wall0, cpu0 = time.perf_counter(), time.process_time()
            q, _ = lowbit.quantize_model(model, rec, calib, algorithms=[algo] if algo else None,
                                         blocks="layers" if algo else None)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            a = acc(q)
            plain = a if algo is None else plain
            gap = float_acc - plain
            row = {"recipe": rec.name, "variant": "plain rounding" if algo is None
                   else algo["name"], "algorithm": algo, "accuracy": a,
                   "gap_recovered": None if algo is None or gap <= 0 else (a - plain) / gap,
                   "quantize_wall_s": wall, "quantize_cpu_s": cpu,
                   "loadavg_before": load0, "loadavg_after": list(os.getloadavg())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": cpu_model(), "model": args.model, "float_accuracy": float_acc,
              "calibration_images": 32 * args.calib, "rows": rows}
    write_results(Path(args.out), result, markdown)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Learned rounding on the {r['model']} CNN (layer by layer)\n",
             f"CPU: {m['cpu']} ({m['cpu_count']} cores, torch threads {m['torch_threads']}, "
             f"flags {' '.join(m['flags'])}); torch {m['torch']}. Float test accuracy "
             f"{r['float_accuracy']:.2f} %; {r['calibration_images']} calibration images.\n",
             "| recipe | variant | options | accuracy % | gap recovered | wall s | CPU s | "
             "load 1-min |", "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        opts = "" if not row["algorithm"] else ", ".join(
            f"{k}={v}" for k, v in row["algorithm"].items() if k != "name")
        gap = "" if row["gap_recovered"] is None else f"{100 * row['gap_recovered']:.0f} %"
        lines.append(f"| {row['recipe']} | {row['variant']} | {opts} | {row['accuracy']:.2f} | "
                     f"{gap} | {row['quantize_wall_s']:.1f} | {row['quantize_cpu_s']:.1f} | "
                     f"{row['loadavg_before'][0]:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
