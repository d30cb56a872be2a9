"""Decide a quantized model's kernels on this machine ahead of time (measured, then cached).

``lowbit tune --model SPEC (--ckpt DIR | --recipe NAME) [--rows 1,8,128,4096] [--out FILE]``
loads the checkpoint (or quantizes the example with the recipe), times every kernel that can
run each quantized linear layer at each row count (``lowbit.tune_kernels``), prints the
chosen kernel per layer with its speed against the float path, and says where the decisions
are cached (``$LOWBIT_CACHE``, default ``~/.cache/lowbit``): later runs of any model with
the same layer shapes on this machine read them instead of measuring.  ``--out`` writes the
table as JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lowbit.cli.flags import FlagError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tune`` subcommand's arguments."""
    parser.add_argument("--model", required=True,
                        help="the float model SPEC: digits, minilm, hf:PATH or module:function")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", default=None,
                        help="converted checkpoint directory (DIR/quantized of lowbit quantize)")
    source.add_argument("--recipe", default=None,
                        help="quantize the model with this preset or recipe file instead")
    parser.add_argument("--rows", default="1,8,128,4096",
                        help="comma-separated row counts (batch x tokens) to decide, "
                             "e.g. 1,32,4096 (default: %(default)s)")
    parser.add_argument("--out", default=None, help="write the decisions to this JSON file")


def parse_rows(text: str) -> tuple[int, ...]:
    """``"1,8,128"`` -> ``(1, 8, 128)``; :class:`FlagError` for anything else."""
    try:
        rows = tuple(int(part) for part in text.split(","))
    except ValueError:
        rows = ()
    if not rows or any(r < 1 or r > 1 << 20 for r in rows):
        raise FlagError("--rows", text, "comma-separated integers in [1, 1048576]",
                        fix="e.g. --rows 1,8,128,4096")
    return rows


def run(args: argparse.Namespace) -> int:
    """Decide a quantized model's kernels on this machine ahead of time (cached on disk)."""
    from lowbit.cli.examples import load_example
    from lowbit.cli.runner import load_or_quantize, write_json
    from lowbit.cli.table import text_table
    from lowbit.kernels.tuning import cache
    from lowbit.model import tune_kernels
    from lowbit.nn.quantized import QuantizedLinear

    rows = parse_rows(args.rows)
    example = load_example(args.model)
    model = load_or_quantize(example, args.ckpt, args.recipe)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    if not layers:
        raise FlagError("--ckpt" if args.ckpt else "--recipe", args.ckpt or args.recipe,
                        "a converted model with quantized linear layers",
                        fix="pass DIR/quantized of lowbit quantize, or a recipe that "
                            "quantizes linear layers")
    start = time.perf_counter()
    tune_kernels(model, rows)
    seconds = time.perf_counter() - start
    table = [(name, m.kernel_path, m.kernel) for name, m in layers]
    print(text_table(["layer", "path", "kernel per row range"], table))
    store = cache()
    where = store.path if getattr(store, "_writable", True) else None
    print(f"\n{len(layers)} layers, rows {','.join(map(str, rows))}: decided in "
          f"{seconds:.1f} s; cached in {where if where else 'memory only (unwritable cache)'}")
    if args.out:
        write_json(Path(args.out), {"model": args.model, "ckpt": args.ckpt,
                                    "recipe": args.recipe, "rows": list(rows),
                                    "seconds": seconds, "cache": str(where) if where else None,
                                    "layers": [dict(zip(("layer", "path", "kernel"), r))
                                               for r in table]})
    return 0
