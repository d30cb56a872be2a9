"""Search the best format per layer under a size budget (exact knapsack) and save the recipe.

``lowbit search --model SPEC --candidates w4a16-g128,w8a16 --budget 0.3x --out_dir DIR``
measures each layer group's loss under each candidate (or estimates it from Hessian traces
with ``--sensitivity hessian``), solves the multiple-choice knapsack exactly, measures the
chosen recipe, and writes ``DIR/recipe.yaml`` (use it with ``lowbit quantize --recipe``),
``DIR/search.json`` and ``DIR/pareto.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.cli.flags import FlagError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="digits, minilm, hf:PATH (local Hugging Face dir) or module:function")
    parser.add_argument("--candidates", required=True,
                        help="comma-separated: float, presets or recipe files "
                             "(e.g. w4a16-g128,w8a16)")
    parser.add_argument("--budget", required=True,
                        help="bytes (e.g. 2000000 or 1.5MiB), a ratio of the float size "
                             "(0.3x) or average bits per weight (4.5bits)")
    parser.add_argument("--out_dir", required=True, help="where recipe.yaml and search.json go")
    parser.add_argument("--sensitivity", choices=("measured", "hessian"), default="measured",
                        help="measure each group alone (default) or estimate from Hessians")
    parser.add_argument("--group", action="append", default=[], metavar="PATTERNS",
                        help="comma-separated fnmatch patterns of layers that must share a "
                             "format (repeatable)")
    parser.add_argument("--batches", type=int, default=None,
                        help="use at most N calibration batches (default: all)")


def run(args: argparse.Namespace) -> int:
    """Search per-layer bit widths under a size budget and save the recipe."""
    from lowbit.cli.examples import load_example
    from lowbit.cli.report import progress_bar
    from lowbit.errors import ConfigError
    from lowbit.report.plots import pareto
    from lowbit.search.budget import parse_budget
    from lowbit.search.candidates import parse_candidates
    from lowbit.search.mixed import search

    for flag, parse in (("--budget", parse_budget), ("--candidates", parse_candidates)):
        try:  # typos fail before the model loads
            parse(getattr(args, flag[2:]))
        except ConfigError as exc:
            raise FlagError(flag, getattr(args, flag[2:]), exc.allowed, fix=exc.fix) from None
    if args.batches is not None and args.batches < 1:
        raise FlagError("--batches", args.batches, "an integer >= 1", fix="e.g. --batches 4")
    example = load_example(args.model)
    groups = [[p.strip() for p in g.split(",") if p.strip()] for g in args.group]
    with progress_bar(None, "search") as bar:
        result = search(example.model, args.candidates, args.budget, example.calib_data,
                        example.score, metric_name=example.metric,
                        sensitivity=args.sensitivity, groups=groups, max_batches=args.batches,
                        progress=lambda _: bar.update(1))
    out = Path(args.out_dir)
    paths = result.save(out)
    pareto(result.to_dict(), out / "pareto.png")
    counts: dict[str, int] = {}
    for cand in result.assignment.values():
        counts[cand] = counts.get(cand, 0) + 1
    print(f"budget {result.budget}: {result.budget_bytes:.0f} bytes for "
          f"{len(result.assignment)} layers; chosen {result.cost_bytes} bytes "
          f"({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    predicted = "n/a (Hessian units)" if result.predicted_metric is None \
        else f"{result.predicted_metric:.4f}"
    print(f"{result.metric_name}: float {result.float_metric:.4f}, predicted {predicted}, "
          f"measured {result.measured_metric:.4f}")
    for name, u in result.uniform.items():
        print(f"  all {name}: {u['cost_bytes']} bytes")
    print(f"wrote {paths['recipe']}, {paths['json']} and {out / 'pareto.png'}")
    return 0
