"""Benchmark: post-training repair of a MobileNet-style CNN (BN folding, CLE, bias correction,
BatchNorm reconstruction) on the committed MobileNet digits model.

Every row quantizes :func:`lowbit.zoo.mobilenet_digits.load_trained_mobilenet_digits` with
``lowbit.quantize_model(model, recipe, calib, algorithms=[...], convert=False)`` on the same
600 calibration images (6 batches of 100, the fixed calibration split) and reports top-1
accuracy of the fake-quant model on the 1200 fixed test images (400 digits x 3 jittered views;
one image = 0.083 points).  Recipes (every Conv2d and the Linear head):

* ``W8A8 per-tensor``: int8 symmetric per-tensor weights, int8 affine per-tensor static
  (min/max) activations;
* ``W4A8 per-channel``: int4 symmetric per-channel weights, same activations.

BN reconstruction rows also report, per BatchNorm, the MSE of the quantized model's output
after that BatchNorm (the folded conv's output, or the kept BatchNorm's) against the float
model's, on the test images (held out: never used for calibration).

Rows are a list (``ROWS``): an algorithm not registered in this build is reported as missing,
not skipped silently.

    python benchmarks/bench_cnn_repair.py   # -> benchmarks/results/cnn_repair.{json,md}
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import torch

import lowbit
from lowbit.algorithms import ALGORITHMS
from lowbit.config import LayerConfig, QuantSpec
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerChannel, PerTensor, Scheme, int4, int8
from lowbit.zoo.digits import accuracy
from lowbit.zoo.mobilenet_digits import load_mobilenet_digits, load_trained_mobilenet_digits

from _machine import cpu  # noqa: E402  (benchmarks/ is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"
_ACT = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor(), method="minmax")


def _recipe(name: str, qtype, granularity) -> Recipe:
    weight = QuantSpec(qtype=qtype, scheme=Scheme.SYMMETRIC, granularity=granularity,
                       method="minmax")
    return Recipe((Rule(ByType(("Conv2d", "Linear")), LayerConfig(weight, _ACT)),), name)


RECIPES = {"W8A8 per-tensor": _recipe("w8a8-per-tensor", int8, PerTensor()),
           "W4A8 per-channel": _recipe("w4a8-per-channel", int4, PerChannel(0))}

#: (label, recipe, algorithms, baseline label for "gap recovered", measure MSE after BNs)
ROWS = [
    ("per-tensor W8A8, BN folded, plain rounding", "W8A8 per-tensor", ["bn_fold"], None, False),
    ("+ CLE", "W8A8 per-tensor", ["bn_fold", "cle"], None, False),
    ("+ CLE + bias correction", "W8A8 per-tensor", ["bn_fold", "cle", "bias_correction"], None,
     False),
    ("per-channel W4A8, BN folded, plain rounding", "W4A8 per-channel", ["bn_fold"], None, True),
    ("+ bias correction", "W4A8 per-channel", ["bn_fold", "bias_correction"],
     "per-channel W4A8, BN folded, plain rounding", False),
    ("+ BN reconstruction (affine patch)", "W4A8 per-channel", ["bn_fold", "bn_affine"],
     "per-channel W4A8, BN folded, plain rounding", True),
    ("+ AdaRound", "W4A8 per-channel", ["bn_fold", "adaround"],
     "per-channel W4A8, BN folded, plain rounding", False),
    ("+ AdaQuant", "W4A8 per-channel", ["bn_fold", "adaquant"],
     "per-channel W4A8, BN folded, plain rounding", False),
    ("per-channel W4A8, BN kept, plain rounding", "W4A8 per-channel", [], None, True),
    ("+ BN reconstruction (re-estimated statistics)", "W4A8 per-channel", ["bn_reestimate"],
     "per-channel W4A8, BN kept, plain rounding", True),
]




def after_bn_outputs(model: torch.nn.Module, x: torch.Tensor, names: dict[str, str]
                     ) -> dict[str, torch.Tensor]:
    """``{bn name: output}`` where ``names`` maps a BN name to the module whose output is
    "after that BN" in ``model`` (the BN itself, or the conv it was folded into)."""
    got: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(mod).register_forward_hook(
        lambda _m, _a, out, bn=bn: got.__setitem__(bn, out.detach())) for bn, mod in names.items()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return got


def main() -> None:
    torch.set_num_threads(2)
    machine = cpu()
    model = load_trained_mobilenet_digits()
    data = load_mobilenet_digits()
    calib = [data.x_calib[i:i + 100] for i in range(0, data.x_calib.shape[0], 100)]
    float_acc = accuracy(model, data.x_test, data.y_test)
    bns = {n: n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    float_after = after_bn_outputs(model, data.x_test, bns)
    rows, by_label = [], {}
    for label, recipe, algos, baseline, mse in ROWS:
        missing = [a for a in algos if a not in ALGORITHMS]
        row = {"setting": label, "recipe": recipe, "algorithms": algos}
        if missing:
            row["missing"] = f"{', '.join(missing)} not registered in this build"
            rows.append(row)
            print(f"{label}: {row['missing']}", flush=True)
            continue
        wall, cpu_t = time.perf_counter(), time.process_time()
        qmodel, records = lowbit.quantize_model(model, RECIPES[recipe], calib,
                                                algorithms=algos, convert=False, seed=0)
        row["quantize_wall_s"] = round(time.perf_counter() - wall, 1)
        row["quantize_cpu_s"] = round(time.process_time() - cpu_t, 1)
        row["loadavg"] = round(os.getloadavg()[0], 2)
        row["accuracy"] = accuracy(qmodel, data.x_test, data.y_test)
        row["drop"] = float_acc - row["accuracy"]
        if baseline is not None and baseline in by_label:
            gap = by_label[baseline]["drop"]
            row["gap_recovered_pct"] = 100.0 * (gap - row["drop"]) / gap if gap > 0 else None
        if mse:
            folded = "bn_fold" in algos
            names = {bn: (bn[:-3] if folded else bn) for bn in bns}
            outs = after_bn_outputs(qmodel, data.x_test, names)
            row["mse_after_bn"] = {bn: float((outs[bn] - float_after[bn]).pow(2).mean())
                                   for bn in bns}
        row["steps_in_records"] = sorted({k for r in records for k in r.metrics
                                          if k.startswith(tuple(algos))} if algos else [])
        rows.append(row)
        by_label[label] = row
        print(f"{label}: {row['accuracy']:.2f} % ({row['quantize_wall_s']} s wall, "
              f"{row['quantize_cpu_s']} s CPU, load {row['loadavg']})", flush=True)
    checks = _checks(float_acc, by_label)
    out = {"model": "lowbit.zoo.mobilenet_digits (committed weights)",
           "float_accuracy": float_acc, "n_test": len(data.y_test), "n_calib": len(data.y_calib),
           "cpu": machine, "loadavg_at_end": os.getloadavg()[0],
           "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "torch": torch.__version__, "rows": rows, "targets": checks}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cnn_repair.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "cnn_repair.md").write_text(markdown(out))
    print(markdown(out))


def _checks(float_acc: float, by: dict) -> dict:
    def drop(label):
        return by[label]["drop"] if label in by else None

    def lower_mse(label, base):
        if label not in by or base not in by:
            return None
        a, b = by[label]["mse_after_bn"], by[base]["mse_after_bn"]
        return {"lower": sum(a[k] < b[k] for k in a), "of": len(a)}

    cle_bc = drop("+ CLE + bias correction")
    w4 = drop("per-channel W4A8, BN folded, plain rounding")
    return {
        "cle_bias_correction_within_0.5_points": None if cle_bc is None else cle_bc <= 0.5,
        "w4a8_plain_loses_at_least_3_points": None if w4 is None else w4 >= 3.0,
        "bn_affine_mse_after_bn_lower": lower_mse("+ BN reconstruction (affine patch)",
                                                  "per-channel W4A8, BN folded, plain rounding"),
        "bn_reestimate_mse_after_bn_lower": lower_mse(
            "+ BN reconstruction (re-estimated statistics)",
            "per-channel W4A8, BN kept, plain rounding"),
    }


def markdown(out: dict) -> str:
    lines = [f"MobileNet digits (float {out['float_accuracy']:.2f} %, {out['n_test']} test "
             f"images, {out['n_calib']} calibration images), fake-quant accuracy; "
             f"{out['cpu']['model']}, load {out['cpu']['loadavg_at_start']:.1f}", "",
             "| setting | algorithms | accuracy % | drop (points) | gap recovered | "
             "quantize wall / CPU s |", "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        algos = ",".join(r["algorithms"]) or "-"
        if "missing" in r:
            lines.append(f"| {r['setting']} | {algos} | - | - | - | {r['missing']} |")
            continue
        gap = r.get("gap_recovered_pct")
        lines.append(f"| {r['setting']} | {algos} | {r['accuracy']:.2f} | {r['drop']:+.2f} | "
                     f"{'-' if gap is None else f'{gap:.0f} %'} | "
                     f"{r['quantize_wall_s']} / {r['quantize_cpu_s']} |")
    lines += ["", "MSE after each BatchNorm vs float on the test images (lower is better):", "",
              "| BatchNorm | folded plain | folded + bn_affine | kept plain | kept + "
              "bn_reestimate |", "|---|---|---|---|---|"]
    cols = ["per-channel W4A8, BN folded, plain rounding", "+ BN reconstruction (affine patch)",
            "per-channel W4A8, BN kept, plain rounding",
            "+ BN reconstruction (re-estimated statistics)"]
    rows = {r["setting"]: r for r in out["rows"]}
    bns = list(rows[cols[0]]["mse_after_bn"]) if cols[0] in rows else []
    for bn in bns:
        vals = [rows[c]["mse_after_bn"][bn] if c in rows and "mse_after_bn" in rows[c] else None
                for c in cols]
        lines.append(f"| {bn} | " + " | ".join("-" if v is None else f"{v:.2e}" for v in vals)
                     + " |")
    lines += ["", "Targets: " + ", ".join(f"{k}: {v}" for k, v in out["targets"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
