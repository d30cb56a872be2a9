"""Evaluate a checkpoint, optionally re-calibrating it at eval time.

``lowbit eval --ckpt DIR --model SPEC --out_dir OUT [--quant_calib_batches N
--calib_method M | role flags]``. With ``--quant_calib_batches N`` the ranges are
re-observed on N batches (with ``--calib_method`` if given) and the newly calibrated
checkpoint is written to ``OUT/checkpoint``; with role flags the checkpoint's weights are
re-quantized with the recipe the flags describe. Metrics go to ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from lowbit.cli.flags import (FlagError, add_quant_flags, backend_of, check_flags,
                              recipe_from_args, uses_role_flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint directory (from lowbit quantize)")
    parser.add_argument("--model", required=True,
                        help="the float model SPEC the checkpoint was made from")
    parser.add_argument("--out_dir", required=True, help="output directory")
    add_quant_flags(parser)


def _recalibrate(model, example, batches: int, method: str | None) -> None:
    from lowbit.model import calibrate
    from lowbit.model.batches import run_batches
    from lowbit.nn.quantizer import TensorQuantizer

    for q in model.modules():
        if isinstance(q, TensorQuantizer) and not q.spec.dynamic:
            if method is not None:
                q.spec = q.spec.replace(method=method)
            q.start_observing(reset=True)
    with calibrate(model):
        run_batches(model, example.calib_data, batches)


def run(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint (optionally re-calibrated at eval time)."""
    import lowbit.model.checkpoint as ckpt
    from lowbit.cli.examples import load_example
    from lowbit.cli.report_layers import layer_table
    from lowbit.cli.runner import quantize_example, write_json
    from lowbit.model import convert, estimate_model_size, lowbit_state, to_float

    args.needs_recipe = False
    check_flags(args)
    example = load_example(args.model)
    model = ckpt.load(args.ckpt, copy.deepcopy(example.model))
    state = lowbit_state(model)
    n_batches = args.quant_calib_batches or 0
    out_dir = Path(args.out_dir)
    if uses_role_flags(args) or n_batches:
        if state.converted:
            raise FlagError("--ckpt", args.ckpt, "a calibrated (fake-quant) checkpoint for "
                            "eval-time calibration", fix="use DIR/calibrated written by "
                                                         "lowbit quantize, not DIR/quantized")
    if uses_role_flags(args):
        example.model = to_float(model)
        out = quantize_example(example, recipe_from_args(args), backend=backend_of(args),
                               max_batches=n_batches or None)
        model, fake, records = out.model, out.fake_quant, out.records
    else:
        if n_batches:
            _recalibrate(model, example, n_batches, args.calib_method)
        fake, records = model, state.records
        model = model if state.converted else convert(model)
    if n_batches or uses_role_flags(args):
        ckpt.save(fake, out_dir / "checkpoint")
    score = example.score(model)
    metrics = {"ckpt": str(args.ckpt), "model": args.model, "metric": example.metric,
               "score": score, "eval_time_calibration_batches": n_batches,
               **estimate_model_size(model)}
    write_json(out_dir / "metrics.json", metrics)
    print(layer_table(records))
    print(f"\n{example.metric}: {score:.4f}  (wrote {out_dir / 'metrics.json'})")
    return 0
