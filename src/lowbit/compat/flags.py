"""Role flags and old spellings, translated onto lowbit's core at this one edge.

* :func:`recipe_from_flags` — the ``--q_proj``/``--q_head``/``--q_block_linear``/
  ``--quantize_all``/``--quant_bits``/``--quant_mode``/``--calib_method`` switches, which
  select layers by role; :func:`migrate_flags` maps the older ``q_proj_head`` flag.
* :data:`QUANT_BACKENDS` / :func:`fq_impl_of` — ``--quant_backend python|cpp`` as ``fq_impl``.
* :func:`set_kernel_backend` — the old name of :func:`lowbit.nn.set_kernel_path`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

from torch import nn

from ..config import LEGACY_FQ_IMPLS, LEGACY_KERNEL_PATHS, LayerConfig, QuantSpec, parse_method
from ..errors import ConfigError, check_choice, check_int_range
from ..nn.quantized import set_kernel_path
from ..presets import Q88
from ..recipe import ByRole, Recipe, Rule
from ..types import PerChannel, PerTensor, QType, Scheme

logger = logging.getLogger(__name__)

#: ``--quant_backend`` values and the ``fq_impl`` each means.
QUANT_BACKENDS = {flag: LEGACY_FQ_IMPLS[flag] for flag in ("python", "cpp")}


def fq_impl_of(args: Any) -> str:
    """The ``fq_impl`` that ``args.quant_backend`` names (python -> reference, cpp -> fused)."""
    return QUANT_BACKENDS[args.quant_backend]


def set_kernel_backend(model: nn.Module, backend: str) -> nn.Module:
    """Deprecated name of :func:`lowbit.nn.set_kernel_path` (``"native"`` is ``"integer"``)."""
    warnings.warn("set_kernel_backend is deprecated: use set_kernel_path (and 'integer' for "
                  "'native')", DeprecationWarning, stacklevel=2)
    return set_kernel_path(model, LEGACY_KERNEL_PATHS.get(backend, backend))


QUANT_MODES = ("dynamic", "fixed88")
_ROLE_FLAGS = (("proj", "q_proj"), ("head", "q_head"), ("block", "q_block_linear"))


def recipe_from_flags(*, q_proj: bool = False, q_head: bool = False,
                      q_block_linear: bool = False, quantize_all: bool = False,
                      quant_bits: int = 8, quant_mode: str = "dynamic",
                      calib_method: str = "maxabs") -> Recipe:
    """A role-based Recipe from the ``--q_*`` switches.

    ``q_proj``/``q_head``/``q_block_linear`` select the input projection, the output head and
    the other Linear/Conv layers (roles from ``lowbit.model.select.find_roles``);
    ``quantize_all`` selects all three. Unselected roles stay float (a rule with ``None``).

    ``quant_mode='dynamic'``: calibrated ("dynamic scale") per-tensor symmetric activations
    using ``calib_method`` (``maxabs``, ``p99``, ...) and per-channel symmetric max-abs
    weights, both on ``quant_bits``. ``quant_mode='fixed88'``: Q8.8, int16 with a fixed scale
    1/256 for weights and activations; fixed88 forces 16 bits, so ``quant_bits`` is ignored.
    """
    flags = {"q_proj": q_proj, "q_head": q_head, "q_block_linear": q_block_linear,
             "quantize_all": quantize_all}
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(name, value, "True or False", fix=f"pass {name}=True or False")
    check_int_range("quant_bits", quant_bits, 2, 16, fix="e.g. quant_bits=8 or quant_bits=16")
    check_choice("quant_mode", quant_mode, QUANT_MODES)
    try:
        parse_method(calib_method)
    except ConfigError as exc:
        raise ConfigError("calib_method", calib_method, exc.allowed, exc.fix) from None

    if quant_mode == "fixed88":
        if quant_bits != 16:
            logger.info("quant_mode='fixed88' forces 16 bits; quant_bits=%d is ignored", quant_bits)
        config = LayerConfig(Q88, Q88)
        label = "fixed88"
    else:
        qtype = QType(quant_bits)
        config = LayerConfig(
            weight=QuantSpec(qtype=qtype, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0),
                             method="minmax"),
            act=QuantSpec(qtype=qtype, scheme=Scheme.SYMMETRIC, granularity=PerTensor(),
                          method=calib_method))
        label = f"int{quant_bits}-{config.act.method}"

    chosen = [role for role, flag in _ROLE_FLAGS if quantize_all or flags[flag]]
    if not chosen:
        raise ConfigError("q_proj/q_head/q_block_linear/quantize_all", False,
                          "at least one of them True",
                          fix="pass --q_proj, --q_head, --q_block_linear or --quantize_all "
                              "to choose which layers to quantize")
    rules = tuple(Rule(ByRole(role), config if role in chosen else None) for role, _ in _ROLE_FLAGS)
    return Recipe(rules, f"flags:{'+'.join(chosen)}:{label}")


def migrate_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Map older flag sets onto the current ones: ``q_proj_head`` becomes ``q_proj`` and
    ``q_head`` (an explicit new flag wins over the old one). Returns a new dict."""
    out = dict(flags)
    if "q_proj_head" in out:
        old = out.pop("q_proj_head")
        if not isinstance(old, bool):
            raise ConfigError("q_proj_head", old, "True or False",
                              fix="old checkpoints store q_proj_head as a bool")
        out.setdefault("q_proj", old)
        out.setdefault("q_head", old)
    return out
