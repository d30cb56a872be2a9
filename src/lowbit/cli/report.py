"""Diagnose a quantized model: where accuracy goes, and what to change.

``lowbit report --model SPEC [--recipe NAME|FILE | role flags] --out_dir DIR`` calibrates the
example with the recipe and analyses it layer by layer (``lowbit.analyze``): SQNR, saturation,
ranges, three sensitivities and advice. It writes ``DIR/report.html`` (self-contained),
``DIR/report.json`` and the PNGs. ``--candidates`` and ``--budget`` add a mixed-precision
search (``lowbit search``) with its size-versus-quality plot to the same report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowbit.cli.flags import (FlagError, add_quant_flags, resolve_recipe, check_flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="digits, minilm, hf:PATH (local Hugging Face dir) or module:function")
    parser.add_argument("--recipe", default=None,
                        help="preset name or JSON/YAML recipe file (default: the example's)")
    parser.add_argument("--out_dir", required=True, help="where report.html/.json and PNGs go")
    parser.add_argument("--batches", type=int, default=None,
                        help="use at most N calibration batches (default: all)")
    parser.add_argument("--probes", type=int, default=2,
                        help="Hutchinson probes per batch for the Hessian traces (default 2)")
    parser.add_argument("--no_sweeps", action="store_true",
                        help="skip the quantize-only / float-only sweeps (one score per layer)")
    parser.add_argument("--no_hessian", action="store_true", help="skip the Hessian traces")
    parser.add_argument("--sweep_batches", type=int, default=None,
                        help="score the sweeps by output cosine to float on N calibration "
                             "batches instead of the example's metric (much faster on large "
                             "models; default: the metric)")
    parser.add_argument("--candidates", default=None,
                        help="also search: comma-separated candidates, e.g. w4a16-g128,w8a16")
    parser.add_argument("--budget", default=None,
                        help="the search's budget: bytes, '1.5MiB', '0.3x' or '4.5bits'")
    add_quant_flags(parser)


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, disable=None)


def run(args: argparse.Namespace) -> int:
    """Analyse a quantized model layer by layer and write an HTML/JSON report."""
    from lowbit.cli.examples import load_example
    from lowbit.report.analysis import analyze
    from lowbit.report.html import write_report

    check_flags(args, "quantize")
    if (args.candidates is None) != (args.budget is None):
        raise FlagError("--candidates/--budget", args.candidates or args.budget,
                        "both or neither", fix="pass e.g. --candidates w4a16-g128,w8a16 "
                                               "--budget 0.3x, or drop the one given")
    if args.batches is not None and args.batches < 1:
        raise FlagError("--batches", args.batches, "an integer >= 1", fix="e.g. --batches 4")
    if args.sweep_batches is not None and args.sweep_batches < 1:
        raise FlagError("--sweep_batches", args.sweep_batches, "an integer >= 1",
                        fix="e.g. --sweep_batches 1")
    resolve_recipe(args)  # a typo fails before the model loads
    example = load_example(args.model)
    recipe = resolve_recipe(args, example)
    n = len(example.calib_data[:args.batches]) if args.batches else len(example.calib_data)
    with progress_bar(None, f"analyse {recipe.name}") as bar:
        analysis = analyze(example.model, recipe, example.calib_data, example.score,
                           metric_name=example.metric, max_batches=n,
                           sweeps=not args.no_sweeps, hessian=not args.no_hessian,
                           n_probes=args.probes, progress=lambda _: bar.update(1),
                           sweep_batches=args.sweep_batches)
    if args.candidates:
        from lowbit.search.mixed import search

        with progress_bar(None, "search") as bar:
            result = search(example.model, args.candidates, args.budget, example.calib_data,
                            example.score, metric_name=example.metric, max_batches=n,
                            progress=lambda _: bar.update(1))
        analysis.search = result.to_dict()
    paths = write_report(analysis, Path(args.out_dir), title=f"lowbit report: {args.model}, "
                                                            f"{recipe.name}")
    print(f"{analysis.metric_name}: float {analysis.float_metric:.4f} -> quantized "
          f"{analysis.quantized_metric:.4f}")
    worst = analysis.worst_layer()
    if worst:
        print(f"most sensitive layer (only it quantized): {worst}")
    for item in analysis.advice:
        print(f"- {item['message']}")
    print(f"wrote {paths['html']} and {paths['json']}")
    return 0
