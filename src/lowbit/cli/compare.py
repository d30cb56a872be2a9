"""Compare the float model with its fake-quant and real quantized versions.

``lowbit compare --model SPEC [--recipes w8a8-static,w8a16,...] [--ckpt DIR ...] --out_dir DIR
[--batches N --warmup N --repeats N]`` quantizes the example with each recipe (default: the
example's own recipe when neither --recipes nor --ckpt is given) and loads each checkpoint
(a calibrated one gives its fake-quant model and its conversion), then measures storage
bytes, latency, throughput, peak memory, the example's score and the output error against
float on the example's calibration batches (``lowbit.report.compare``). Prints the table
and writes ``DIR/compare.json`` and ``DIR/compare.md``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from lowbit.cli.flags import FlagError

REFERENCE = "float"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="digits, minilm, hf:PATH (local Hugging Face dir) or module:function")
    parser.add_argument("--recipes", default=None,
                        help="comma-separated presets or recipe files, e.g. w8a8-static,w8a16 "
                             "(default: the example's recipe, unless --ckpt is given)")
    parser.add_argument("--ckpt", action="append", default=[], metavar="DIR",
                        help="a checkpoint from lowbit quantize (repeatable)")
    parser.add_argument("--out_dir", required=True, help="where compare.json/compare.md go")
    parser.add_argument("--batches", type=int, default=None,
                        help="measure on the first N calibration batches (default: all)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes (default 10)")


def parse_recipes(value: str | None) -> list[str]:
    """The recipe names of ``--recipes``, each checked (a bad one is a FlagError)."""
    from lowbit.errors import ConfigError
    from lowbit.recipe import load_recipe

    if value is None:
        return []
    names = [v.strip() for v in value.split(",")]
    if not all(names):
        raise FlagError("--recipes", value, "comma-separated recipe names without empty items",
                        fix="e.g. --recipes w8a8-static,w8a16")
    for name in names:
        try:
            load_recipe(name)
        except ConfigError as exc:
            raise FlagError("--recipes", name, exc.allowed, fix=exc.fix) from None
    return names


def _candidates(example, recipes: list[str], ckpts: list[str]) -> dict:
    import lowbit.model.checkpoint as ckpt
    from lowbit.cli.runner import quantize_example
    from lowbit.model import convert, lowbit_state

    models = {}
    for name in recipes:
        out = quantize_example(example, name)
        models[f"{name} fake-quant"] = out.fake_quant
        models[f"{name} real"] = out.model
    for directory in ckpts:
        model = ckpt.load(directory, copy.deepcopy(example.model))
        label = str(directory)
        if lowbit_state(model).converted:
            models[f"{label} real"] = model
        else:
            models[f"{label} fake-quant"] = model
            models[f"{label} real"] = convert(model)
    return models


def run(args: argparse.Namespace) -> int:
    """Compare float, fake-quant and real quantized models: size, speed, memory, accuracy."""
    from lowbit.cli.examples import load_example
    from lowbit.report import compare

    recipes = parse_recipes(args.recipes)
    for flag, low, example_value in (("warmup", 0, 2), ("repeats", 1, 10), ("batches", 1, 4)):
        value = getattr(args, flag)
        if value is not None and value < low:
            raise FlagError(f"--{flag}", value, f"an integer >= {low}",
                            fix=f"e.g. --{flag} {example_value}")
    example = load_example(args.model)
    if not recipes and not args.ckpt:
        recipes = [example.default_recipe]
    candidates = _candidates(example, recipes, args.ckpt)
    data = example.calib_data[:args.batches] if args.batches else example.calib_data
    result = compare(example.model, candidates, data, example.score,
                     warmup=args.warmup, repeats=args.repeats, metric_name=example.metric,
                     reference_name=REFERENCE)
    out_dir = Path(args.out_dir)
    result.save_json(out_dir / "compare.json")
    (out_dir / "compare.md").write_text(f"# lowbit compare: {args.model}\n\n{example.note}\n\n"
                                        + result.to_markdown() + "\n")
    print(result.table())
    print(f"\npeak memory: {result.settings['peak_memory_method']}")
    print(f"wrote {out_dir / 'compare.json'} and {out_dir / 'compare.md'}")
    return 0
