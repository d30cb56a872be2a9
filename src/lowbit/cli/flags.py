"""Seed 000's quantization flags, verbatim, shared by ``quantize`` and ``eval``.

``--q_proj --q_head --q_block_linear --quantize_all --quant_backend {python,cpp}
--quant_bits N --quant_mode {dynamic,fixed88} --calib_method M --quant_calib_batches N``.
python = lowbit's reference autograd backend, cpp = PyTorch's native fused kernels.
"""

from __future__ import annotations

import argparse

from lowbit.errors import ConfigError

BACKENDS = {"python": "reference", "cpp": "native"}
ROLE_FLAGS = ("q_proj", "q_head", "q_block_linear", "quantize_all")


class FlagError(ConfigError):
    """An invalid flag combination (the CLI exits with status 2)."""


def add_quant_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("quantization flags (seed 000)")
    g.add_argument("--q_proj", action="store_true", help="quantize the input projection layer")
    g.add_argument("--q_head", action="store_true", help="quantize the output head layer")
    g.add_argument("--q_block_linear", action="store_true",
                   help="quantize the Linear/Conv layers inside blocks")
    g.add_argument("--quantize_all", action="store_true", help="all of the three above")
    g.add_argument("--quant_backend", choices=tuple(BACKENDS), default="python",
                   help="python = lowbit autograd (reference), cpp = PyTorch fused kernels (native)")
    g.add_argument("--quant_bits", type=int, default=None,
                   help="bits for weights and activations, 2..16 (default 8)")
    g.add_argument("--quant_mode", choices=("dynamic", "fixed88"), default="dynamic",
                   help="dynamic scale, or INT16 Q8.8 fixed point (forces 16 bits, scale 1/256)")
    g.add_argument("--calib_method", default=None,
                   help="maxabs, p99, percentile:P, mse, kl or auto (default maxabs)")
    g.add_argument("--quant_calib_batches", type=int, default=None,
                   help="number of calibration batches (0 = no calibration)")


def uses_role_flags(args: argparse.Namespace) -> bool:
    return any(getattr(args, f) for f in ROLE_FLAGS)


def check_flags(args: argparse.Namespace) -> None:
    """Reject contradictory combinations with one sentence saying what to do."""
    if getattr(args, "recipe", None) and uses_role_flags(args):
        raise FlagError("--recipe", args.recipe, "either --recipe or the --q_* role flags",
                        fix="drop --recipe to build the recipe from --q_proj/--q_head/"
                            "--q_block_linear/--quantize_all, or drop those flags")
    if args.quant_mode == "fixed88" and args.quant_bits not in (None, 16):
        raise FlagError("--quant_bits", args.quant_bits, "16 (or nothing) with --quant_mode fixed88",
                        fix="fixed88 is INT16 Q8.8: drop --quant_bits or use --quant_mode dynamic")
    if args.quant_bits is not None and not 2 <= args.quant_bits <= 16:
        raise FlagError("--quant_bits", args.quant_bits, "an integer in [2, 16]",
                        fix="e.g. --quant_bits 8")
    if args.quant_calib_batches is not None and args.quant_calib_batches < 0:
        raise FlagError("--quant_calib_batches", args.quant_calib_batches, "an integer >= 0",
                        fix="e.g. --quant_calib_batches 50")
    if not uses_role_flags(args) and (args.quant_bits is not None or args.quant_mode != "dynamic"
                                      or args.calib_method is not None) \
            and not getattr(args, "recipe", None) and getattr(args, "needs_recipe", True):
        raise FlagError("--quant_bits/--quant_mode/--calib_method", "given without a layer",
                        "together with --q_proj, --q_head, --q_block_linear or --quantize_all",
                        fix="say which layers to quantize, e.g. --quantize_all")
    if args.calib_method is not None:
        from lowbit.config import parse_method

        try:
            parse_method(args.calib_method)
        except ConfigError as exc:
            raise FlagError("--calib_method", args.calib_method,
                            "maxabs, p99, percentile:P, mse, kl or auto", fix=exc.fix) from None


def recipe_from_args(args: argparse.Namespace):
    """The Recipe the role flags describe (``lowbit.presets.recipe_from_flags``)."""
    from lowbit.presets import recipe_from_flags

    return recipe_from_flags(q_proj=args.q_proj, q_head=args.q_head,
                             q_block_linear=args.q_block_linear, quantize_all=args.quantize_all,
                             quant_bits=args.quant_bits or 8, quant_mode=args.quant_mode,
                             calib_method=args.calib_method or "maxabs")


def backend_of(args: argparse.Namespace) -> str:
    return BACKENDS[args.quant_backend]
