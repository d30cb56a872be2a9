"""The role and quantization flags (``--q_proj`` ... ``--out_dir``), verbatim, shared by ``quantize`` and ``eval``.

``--q_proj --q_head --q_block_linear --quantize_all --quant_backend {python,cpp}
--quant_bits N --quant_mode {dynamic,fixed88} --calib_method M --quant_calib_batches N``.
``--quant_backend`` is kept verbatim and translated here, at the edge, to ``fq_impl``:
python = lowbit's reference autograd, cpp = PyTorch's fused fake-quant ops.

How they combine (anything else exits with status 2 and one line saying what to do):

* The role flags (``--q_proj``, ``--q_head``, ``--q_block_linear``, ``--quantize_all``) build a
  recipe; ``--quant_bits`` (2..16, default 8), ``--quant_mode`` and ``--calib_method`` shape it.
  They cannot be combined with ``--recipe``.
* ``--quant_bits`` and ``--quant_mode fixed88`` only shape the role-flag recipe: without a role
  flag they are refused (a preset or recipe file fixes its own bits). fixed88 is INT16 Q8.8,
  so it takes no ``--quant_bits`` other than 16 and no ``--calib_method``.
* ``--calib_method`` without role flags: ``quantize`` uses it for the recipe's calibrated
  activation ranges (refused when the recipe has none, e.g. ``w8a8``'s per-token dynamic ones);
  ``eval`` uses it when re-calibrating, so it needs ``--quant_calib_batches N`` (N >= 1).
* ``--quant_calib_batches 0`` means no calibration: fine for recipes whose ranges need no data
  (weights only, dynamic or fixed-point activations), refused otherwise.
"""

from __future__ import annotations

import argparse

from lowbit.compat.flags import QUANT_BACKENDS, fq_impl_of  # noqa: F401  (CLI names)
from lowbit.errors import ConfigError
ROLE_FLAGS = ("q_proj", "q_head", "q_block_linear", "quantize_all")
_ROLES = "--q_proj, --q_head, --q_block_linear or --quantize_all"
_ROLE_HINT = "e.g. --quantize_all"


class FlagError(ConfigError):
    """An invalid flag combination (the CLI exits with status 2)."""


def add_quant_flags(parser: argparse.ArgumentParser) -> None:
    """Add the quantization flags to ``parser`` (see the module docstring)."""
    g = parser.add_argument_group("quantization flags")
    g.add_argument("--q_proj", action="store_true", help="quantize the input projection layer")
    g.add_argument("--q_head", action="store_true", help="quantize the output head layer")
    g.add_argument("--q_block_linear", action="store_true",
                   help="quantize the Linear/Conv layers inside blocks")
    g.add_argument("--quantize_all", action="store_true", help="all of the three above")
    g.add_argument("--quant_backend", choices=tuple(QUANT_BACKENDS), default="python",
                   help="how fake quantization computes: python = lowbit autograd "
                        "(fq_impl reference), cpp = PyTorch fused ops (fq_impl fused)")
    g.add_argument("--quant_bits", type=int, default=None,
                   help="bits for weights and activations of the layers the role flags choose, "
                        "2..16 (default 8)")
    g.add_argument("--quant_mode", choices=("dynamic", "fixed88"), default="dynamic",
                   help="with role flags: calibrated scale, or INT16 Q8.8 fixed point "
                        "(forces 16 bits, scale 1/256)")
    g.add_argument("--calib_method", default=None,
                   help="maxabs, p99, percentile:P, mse, kl or auto (default maxabs); without "
                        "role flags it sets the recipe's calibrated activation ranges")
    g.add_argument("--quant_calib_batches", type=int, default=None,
                   help="number of calibration batches (0 = no calibration)")


def uses_role_flags(args: argparse.Namespace) -> bool:
    """True when any of ``--q_proj/--q_head/--q_block_linear/--quantize_all`` is given."""
    return any(getattr(args, f) for f in ROLE_FLAGS)


def check_flags(args: argparse.Namespace, command: str = "quantize") -> None:
    """Reject contradictory combinations with one sentence saying what to do.

    ``command`` is ``"quantize"`` or ``"eval"``: they differ only in what ``--calib_method``
    without role flags means (see the module docstring).
    """
    roles = uses_role_flags(args)
    if getattr(args, "recipe", None) and roles:
        raise FlagError("--recipe", args.recipe, "either --recipe or the --q_* role flags",
                        fix="drop --recipe to build the recipe from --q_proj/--q_head/"
                            "--q_block_linear/--quantize_all, or drop those flags")
    if args.quant_bits is not None and not 2 <= args.quant_bits <= 16:
        raise FlagError("--quant_bits", args.quant_bits, "an integer in [2, 16]",
                        fix="e.g. --quant_bits 8")
    if args.quant_mode == "fixed88" and args.quant_bits not in (None, 16):
        raise FlagError("--quant_bits", args.quant_bits, "16 (or nothing) with --quant_mode fixed88",
                        fix="fixed88 is INT16 Q8.8: drop --quant_bits or use --quant_mode dynamic")
    if args.quant_mode == "fixed88" and args.calib_method is not None:
        raise FlagError("--calib_method", args.calib_method, "nothing with --quant_mode fixed88",
                        fix="fixed88 has the constant scale 1/256, so no range is calibrated: "
                            "drop --calib_method or use --quant_mode dynamic")
    if args.quant_calib_batches is not None and args.quant_calib_batches < 0:
        raise FlagError("--quant_calib_batches", args.quant_calib_batches, "an integer >= 0",
                        fix="e.g. --quant_calib_batches 50 (0 = no calibration)")
    if args.calib_method is not None:
        from lowbit.config import parse_method

        try:
            parse_method(args.calib_method)
        except ConfigError as exc:
            raise FlagError("--calib_method", args.calib_method,
                            "maxabs, p99, percentile:P, mse, kl or auto", fix=exc.fix) from None
    if roles:
        return
    for flag, value, given, preset in (
            ("--quant_bits", args.quant_bits, args.quant_bits is not None, "--recipe int16"),
            ("--quant_mode", args.quant_mode, args.quant_mode != "dynamic",
             "--recipe int16-fixed88")):
        if given:
            fix = (f"add {_ROLE_HINT} to choose the layers it applies to"
                   + (f", or use a preset instead, e.g. {preset}" if command == "quantize"
                      else " (the checkpoint is then re-quantized with it)"))
            raise FlagError(flag, value, f"only with a role flag ({_ROLES})", fix=fix)
    if command == "eval" and args.calib_method is not None and not args.quant_calib_batches:
        raise FlagError("--calib_method", args.calib_method,
                        "only when re-calibrating (--quant_calib_batches N with N >= 1) or "
                        "re-quantizing (a role flag)",
                        fix="add --quant_calib_batches N to re-calibrate the checkpoint's ranges "
                            "with it, or drop --calib_method")


def recipe_from_args(args: argparse.Namespace):
    """The Recipe the role flags describe (``lowbit.compat.recipe_from_flags``)."""
    from lowbit.compat.flags import recipe_from_flags

    return recipe_from_flags(q_proj=args.q_proj, q_head=args.q_head,
                             q_block_linear=args.q_block_linear, quantize_all=args.quantize_all,
                             quant_bits=args.quant_bits or 8, quant_mode=args.quant_mode,
                             calib_method=args.calib_method or "maxabs")


def with_calib_method(recipe, method: str):
    """``recipe`` with every calibrated (static, not fixed-point) activation spec using
    ``method``; weights keep theirs. Raises :class:`FlagError` when no rule has such a spec."""
    from lowbit.config import LayerConfig, normalize_method
    from lowbit.recipe import Recipe, Rule
    from lowbit.types import Scheme

    def calibrated(spec) -> bool:
        return spec is not None and not spec.dynamic and spec.scheme is not Scheme.FIXED_POINT

    rules = []
    for rule in recipe.rules:
        config = rule.config
        if config is not None and calibrated(config.act):
            config = LayerConfig(config.weight, config.act.replace(method=method))
        rules.append(Rule(rule.selector, config))
    if all(r.config is None or not calibrated(r.config.act) for r in recipe.rules):
        raise FlagError("--calib_method", method,
                        "only with a recipe that calibrates activation ranges "
                        "(e.g. w8a8-static, int16)",
                        fix=f"recipe {recipe.name!r} has no calibrated activations (dynamic, "
                            "fixed-point or weight-only); drop --calib_method or pick another "
                            "recipe")
    return Recipe(tuple(rules), f"{recipe.name}+{normalize_method(method)}")


def resolve_recipe(args: argparse.Namespace, example=None):
    """The recipe of ``--recipe`` or the role flags (None: the example's own)."""
    from lowbit.errors import ConfigError
    from lowbit.recipe import load_recipe

    recipe = recipe_from_args(args) if uses_role_flags(args) else None
    if args.recipe:
        try:
            recipe = load_recipe(args.recipe)
        except ConfigError as exc:
            raise FlagError("--recipe", args.recipe, exc.allowed, fix=exc.fix) from None
    if recipe is None and example is not None:
        recipe = load_recipe(example.default_recipe)
    if recipe is not None and args.calib_method is not None and not uses_role_flags(args):
        recipe = with_calib_method(recipe, args.calib_method)
    return recipe
