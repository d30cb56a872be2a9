"""Evaluate a checkpoint, optionally re-calibrating it at eval time.

``lowbit eval --ckpt DIR --model SPEC --out_dir OUT [--quant_calib_batches N
--calib_method M | role flags]``. With ``--quant_calib_batches N`` the ranges are
re-observed on N batches (with ``--calib_method`` if given) and the newly calibrated
checkpoint is written to ``OUT/checkpoint``; with role flags the checkpoint's weights are
re-quantized with the recipe the flags describe (and written there too). Both need the
calibrated (fake-quant) checkpoint, ``DIR/calibrated`` of ``lowbit quantize``. A new
``--calib_method`` applies to the calibrated activation ranges (weights keep their method),
and the checkpoint's layer configs say so. Metrics go to ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from lowbit.cli.flags import (FlagError, add_quant_flags, fq_impl_of, check_flags,
                              recipe_from_args, uses_role_flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` subcommand's arguments."""
    parser.add_argument("--ckpt", required=True, help="checkpoint directory (from lowbit quantize)")
    parser.add_argument("--model", required=True,
                        help="the float model SPEC the checkpoint was made from")
    parser.add_argument("--out_dir", required=True, help="output directory")
    parser.add_argument("--text", default=None, metavar="FILE",
                        help="causal LMs: report the perplexity on this UTF-8 text file")
    add_quant_flags(parser)


def read_text(path: str) -> str:
    """The UTF-8 text of ``path``; :class:`FlagError` (exit 2) when the file is missing,
    empty (or only whitespace) or not UTF-8."""
    file = Path(path)
    if not file.is_file():
        raise FlagError("--text", path, "an existing text file", fix="check the path")
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlagError("--text", path, "a UTF-8 text file", fix=f"byte {exc.start} is not "
                        "UTF-8; convert it, e.g. iconv -t UTF-8") from None
    if not text.strip():
        raise FlagError("--text", path, "a non-empty text file", fix="put the text to score in it")
    return text


def _recalibrate(model, example, batches: int, method: str | None) -> int:
    """Re-observe the ranges of ``model`` on up to ``batches`` batches; return how many ran.

    With ``method`` the calibrated activation specs switch to it (weights keep theirs), in
    the quantizer and in the layer's config and record alike, so that the saved checkpoint
    describes what was done and loads. A ``method`` with no calibrated activation to apply
    to raises :class:`FlagError`.
    """
    from lowbit.config import LayerConfig
    from lowbit.model import calibrate, lowbit_state, quant_modules
    from lowbit.model.batches import run_batches
    from lowbit.types import Scheme

    state = lowbit_state(model)
    if method is not None:
        changed = 0
        for name, module in quant_modules(model):
            spec = None if module.act_quantizer is None else module.act_quantizer.spec
            if spec is None or spec.dynamic or spec.scheme is Scheme.FIXED_POINT:
                continue
            module.config = LayerConfig(module.config.weight, spec.replace(method=method))
            module.act_quantizer.spec = module.config.act
            record = state.record(name)
            if record is not None:
                record.config = module.config.to_dict()
            changed += 1
        if not changed:
            raise FlagError("--calib_method", method, "only for a checkpoint with calibrated "
                            "activation ranges", fix="its activations are dynamic, fixed-point "
                                                     "or float; drop --calib_method")
    with calibrate(model):  # observers restart from scratch (start_observing resets them)
        return run_batches(model, example.calib_data, batches)


def run(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint (optionally re-calibrated at eval time)."""
    import lowbit.model.checkpoint as ckpt
    from lowbit.cli.examples import load_example
    from lowbit.cli.report_layers import layer_table
    from lowbit.cli.runner import quantize_example, write_json
    from lowbit.model import convert, estimate_model_size, lowbit_state, to_float

    check_flags(args, "eval")
    text = None if args.text is None else read_text(args.text)
    roles = uses_role_flags(args)
    recipe = recipe_from_args(args) if roles else None
    example = load_example(args.model)
    if text is not None:
        if example.text_score is None:
            raise FlagError("--text", args.text, "a causal language model (--model hf:DIR "
                            "with a *ForCausalLM config)", fix=f"drop --text for {args.model}")
        example.score = lambda m, _f=example.text_score: _f(m, text)
        example.metric = "perplexity"
    model = ckpt.load(args.ckpt, copy.deepcopy(example.model))
    state = lowbit_state(model)
    n_batches = args.quant_calib_batches or 0
    out_dir = Path(args.out_dir)
    if (roles or n_batches) and state.converted:
        what = "re-quantizing with role flags" if roles else "eval-time calibration"
        raise FlagError("--ckpt", args.ckpt, f"a calibrated (fake-quant) checkpoint for {what}",
                        fix="use DIR/calibrated written by lowbit quantize, not DIR/quantized "
                            "(integer weights cannot be re-calibrated)")
    if roles:
        example.model = to_float(model)
        out = quantize_example(example, recipe, fq_impl=fq_impl_of(args),
                               max_batches=args.quant_calib_batches)
        model, fake, records, n_batches = out.model, out.fake_quant, out.records, out.calib_batches
    else:
        if n_batches:
            n_batches = _recalibrate(model, example, n_batches, args.calib_method)
        fake, records = model, state.records
        model = model if state.converted else convert(model)
    if n_batches or roles:
        ckpt.save(fake, out_dir / "checkpoint")
    score = example.score(model)
    metrics = {"ckpt": str(args.ckpt), "model": args.model, "metric": example.metric,
               "score": score, "text": args.text, "eval_time_calibration_batches": n_batches,
               **estimate_model_size(model)}
    write_json(out_dir / "metrics.json", metrics)
    print(layer_table(records))
    print(f"\n{example.metric}: {score:.4f}  (wrote {out_dir / 'metrics.json'})")
    return 0
