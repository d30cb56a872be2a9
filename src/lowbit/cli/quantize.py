"""Quantize a model with a recipe and save the checkpoints, records and score.

``lowbit quantize --model SPEC --recipe NAME|FILE --out_dir DIR`` (or the role flags of
instead of --recipe). Writes ``DIR/calibrated`` (fake-quant: float weights,
ranges and observer state — can be re-calibrated or fine-tuned), ``DIR/quantized``
(integer storage), ``DIR/records.json``, ``DIR/summary.json`` and a diagnostics report in
``DIR/report/`` (``--report light``: per-layer SQNR, ranges, histograms and advice;
``full`` adds the sensitivity sweeps and Hessian traces; ``none`` skips it). ``--algo gptq``
runs layer-wise algorithms block by block after calibration (the checkpoints' manifests record
them). Without --recipe and role flags the example's own recipe is used (``w8a8-static`` for
digits, ``w8a8`` otherwise).  Under ``torchrun --nproc_per_node N -m lowbit quantize ...``
each rank calibrates on its share of the batches, the ranges and Hessians are combined
across ranks, and rank 0 writes every output (:mod:`lowbit.cli.launch`).
How the flags combine: :mod:`lowbit.cli.flags`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.cli.flags import (FlagError, add_quant_flags, resolve_recipe, fq_impl_of, check_flags)
from lowbit.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``quantize`` subcommand's arguments."""
    parser.add_argument("--model", required=True,
                        help="digits, minilm, hf:PATH (local Hugging Face dir) or module:function")
    parser.add_argument("--recipe", default=None,
                        help="preset name (w8a8, w8a8-static, w8a16, w4a16-g128, w4a8, "
                             "int16-fixed88, int16, w4a16-g64, w3a16-g64) or a JSON/YAML "
                             "recipe file (default: "
                             "w8a8-static for digits, w8a8 otherwise)")
    parser.add_argument("--out_dir", required=True, help="output directory")
    parser.add_argument("--algo", default=None,
                        help="post-training algorithms, comma-separated, e.g. gptq or "
                             "bn_fold,cle,bias_correction: bn_fold/cle rewrite the float "
                             "model, gptq/awq/smoothquant run block by block after "
                             "calibration, bias_correction/bn_affine/bn_reestimate run on "
                             "the calibrated model (registered: lowbit.algorithms.ALGORITHMS)")
    parser.add_argument("--report", choices=("light", "full", "none"), default="light",
                        help="diagnostics report in OUT_DIR/report/ (default light: SQNR, "
                             "ranges, histograms, advice; full adds sensitivities)")
    add_quant_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Quantize a model (calibrate, convert) and save checkpoints and a summary."""
    import lowbit.model.checkpoint as ckpt
    from lowbit.cli.examples import load_example
    from lowbit.cli.report_layers import layer_table
    from lowbit.cli.runner import quantize_example, write_json
    from lowbit.distributed import is_main, local


    check_flags(args, "quantize")
    resolve_recipe(args)  # a recipe typo fails here, before a (possibly slow) model is loaded
    algorithms = _algorithms(args.algo)
    example = load_example(args.model)
    recipe = resolve_recipe(args, example)
    out = quantize_example(example, recipe, fq_impl=fq_impl_of(args),
                           max_batches=args.quant_calib_batches, algorithms=algorithms)
    if not is_main():
        return 0  # under torchrun every rank holds the same model; rank 0 writes it
    float_score = example.score(example.model)
    out_dir = Path(args.out_dir)
    ckpt.save(out.fake_quant, out_dir / "calibrated")
    ckpt.save(out.model, out_dir / "quantized")
    write_json(out_dir / "records.json", [r.to_dict() for r in out.records])
    n_quantized = sum(r.action == "quantized" for r in out.records)
    summary = {"model": args.model, "recipe": out.recipe, "fq_impl": fq_impl_of(args),
               "algorithms": [a.to_dict() for a in algorithms],
               "calib_batches": out.calib_batches, "quantized_layers": n_quantized,
               "metric": example.metric, "float": float_score, "quantized": out.score,
               "change_vs_float": out.score - float_score, **out.size}
    write_json(out_dir / "summary.json", summary)
    print(layer_table(out.records))
    print(f"\n{example.metric}: float {float_score:.4f} -> quantized {out.score:.4f} "
          f"({out.score - float_score:+.4f}); {out.size['float_bytes']} -> "
          f"{out.size['quantized_bytes']} bytes ({out.size['compression_ratio']:.2f}x)")
    if not n_quantized:
        print(f"nothing was quantized: recipe {out.recipe!r} selected no layer of "
              f"{args.model} ({len(out.records)} layer(s) considered); the checkpoints hold the "
              "float model")
    print(f"wrote {out_dir}/calibrated, {out_dir}/quantized, records.json, summary.json")
    if args.report != "none" and out.calib_batches:
        with local():  # rank 0 alone: its calibration is not reduced across ranks
            _write_report(args, example, recipe, out.calib_batches, out_dir / "report")
    return 0


def _algorithms(text: str | None) -> list:
    """The algorithms ``--algo`` names (checked before any model is loaded)."""
    from lowbit.algorithms import parse_algorithms

    try:
        return parse_algorithms(text)
    except ConfigError as exc:
        raise FlagError("--algo", text, exc.allowed, fix="e.g. --algo gptq") from None


def _write_report(args, example, recipe, batches: int, folder: Path) -> None:
    """The diagnostics report of this quantization (``lowbit report`` with the same recipe)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("report skipped: matplotlib is missing (pip install 'lowbit[plot]')")
        return
    from lowbit.report.analysis import analyze
    from lowbit.report.html import write_report

    full = args.report == "full"
    analysis = analyze(example.model, recipe, example.calib_data, example.score,
                       metric_name=example.metric, max_batches=batches, sweeps=full,
                       hessian=full, n_probes=2)
    paths = write_report(analysis, folder, title=f"lowbit report: {args.model}, {recipe.name}")
    print(f"wrote {paths['html']} ({len(analysis.advice)} advice item(s))")
