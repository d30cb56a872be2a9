"""Quantize a built-in example with several presets and print what each costs and saves.

``lowbit demo [--model digits|minilm] [--out_dir DIR]``: trains (or reuses a cached)
small CNN on scikit-learn's digits, or loads the pretrained MiniLM-L6 encoder, then
quantizes it with several presets and prints recipe / score (accuracy or cosine) / change
vs float / weight bytes / compression / layers quantized, also written as ``demo.json`` and
``demo.md`` in DIR, with the reason for any layer a preset left float.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowbit.cli.table import markdown_table, text_table

PRESETS = {"digits": ("w8a8-static", "w8a8", "w8a16", "w4a16-g128", "int16-fixed88"),
           "minilm": ("w8a8", "w8a8-static", "w8a16", "w4a16-g128")}
COLUMNS = ("change vs float", "weight bytes", "compression", "layers quantized")


def headers(metric: str) -> tuple[str, ...]:
    """The table's column names; the score column is named after the example's metric."""
    return ("recipe", metric) + COLUMNS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's arguments."""
    parser.add_argument("--model", choices=tuple(PRESETS), default="digits",
                        help="built-in example (default: digits)")
    parser.add_argument("--out_dir", default="lowbit_demo", help="where demo.json/demo.md go")


def run(args: argparse.Namespace) -> int:
    """Quantize a built-in example with several presets and compare them."""
    from lowbit.cli.examples import load_example
    from lowbit.cli.runner import quantize_example, write_json
    from lowbit.model import estimate_model_size

    print(f"lowbit demo: loading the {args.model} example ...", file=sys.stderr)
    example = load_example(args.model)
    float_score = example.score(example.model)
    float_bytes = estimate_model_size(example.model)["float_bytes"]
    rows = [("float32", float_score, 0.0, float_bytes, 1.0, "")]
    results = []
    for name in PRESETS[args.model]:
        out = quantize_example(example, name)
        n_q = sum(r.action == "quantized" for r in out.records)
        rows.append((name, out.score, out.score - float_score, out.size["quantized_bytes"],
                     out.size["compression_ratio"], f"{n_q}/{len(out.records)}"))
        results.append({"recipe": name, example.metric: out.score,
                        "change_vs_float": out.score - float_score,
                        "quantized_layers": n_q, "selected_layers": len(out.records),
                        "not_quantized": {r.name: r.reason for r in out.records
                                          if r.action != "quantized"},
                        **out.size})
    table_rows = [(*r[:4], f"{r[4]:.2f}x", r[5]) for r in rows]
    columns = headers(example.metric)
    print(f"\n{example.note}\n")
    print(text_table(columns, table_rows))
    notes = [f"{r['recipe']}: {len(r['not_quantized'])} layer(s) not quantized (reasons in "
             f"demo.json), e.g. {next(iter(r['not_quantized'].values()))}"
             for r in results if r["not_quantized"]]
    if notes:
        print("\n" + "\n".join(notes))
    out_dir = Path(args.out_dir)
    write_json(out_dir / "demo.json", {"model": args.model, "metric": example.metric,
                                       "float": {example.metric: float_score,
                                                 "float_bytes": float_bytes},
                                       "results": results})
    (out_dir / "demo.md").write_text(f"# lowbit demo: {args.model}\n\n{example.note}\n\n"
                                     + markdown_table(columns, table_rows) + "\n"
                                     + "".join(f"\n- {note}\n" for note in notes))
    print(f"\nwrote {out_dir / 'demo.json'} and {out_dir / 'demo.md'}")
    return 0
