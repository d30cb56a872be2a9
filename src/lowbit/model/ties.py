"""Tied weights: layers that share one weight Parameter are quantized once, in one format.

A language model often ties its token embedding and its LM head (``lm_head.weight is
embed_tokens.weight``: an ``[V, D]`` table that is also the head's ``[out=V, in=D]`` matrix).
Ties are found from Parameter identity, never from names.  The selected members of a tie:

* get **one weight spec**: the *stricter* of their recipe's specs — the one with more weight
  bits; on equal bits the first member in registration order keeps its own.  Stricter, so
  that tying never lowers a layer below what its rule asked for (``w4a16-g128`` gives an LLM's
  embedding int8 and its head int4: the tied pair is int8, per row, for both).  Each member
  keeps its own activation spec (an Embedding has none);
* share **one weight quantizer** (prepare), so fake quantization, calibration and QAT see
  one set of qparams;
* share **one ``qdata``/``scale``/``zero_point``** after convert (:func:`share_converted`), so a
  checkpoint stores the codes once and loads them back as one object (see
  :mod:`lowbit.model.checkpoint`).

Both LayerRecords say so: ``metrics["tied_with"]`` names the other members and the reason
states which spec was kept.  A member a rule keeps float (or skips) keeps the float Parameter:
the weight then exists in two forms, and the quantized member's record says so.
"""

from __future__ import annotations

from torch import nn

from ..config import LayerConfig
from ..nn.quantized import QuantizedModule
from ..records import LayerRecord

QUANT_BUFFERS = ("qdata", "scale", "zero_point")


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Names of the modules sharing one ``weight`` Parameter, one list per shared weight
    (two or more modules each), in registration order.  A module registered under several
    names counts once (its first name)."""
    by_weight: dict[int, list[str]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if name else None
        if weight is None or id(module) in seen:
            continue
        seen.add(id(module))
        by_weight.setdefault(id(weight), []).append(name)
    return [names for names in by_weight.values() if len(names) > 1]


def _bits(config: LayerConfig) -> int:
    return config.weight.qtype.bits if config.weight is not None else 0


def unify_tied(model: nn.Module, configs: dict[str, LayerConfig],
               records: list[LayerRecord]) -> dict[str, LayerConfig]:
    """``configs`` with one weight spec per tie (the stricter; see the module docstring),
    and the members' records annotated.  Returns a new dict; ``records`` are updated."""
    by_name = {r.name: r for r in records}
    out = dict(configs)
    for group in tied_groups(model):
        members = [n for n in group if n in configs and configs[n].weight is not None]
        others = [n for n in group if n not in members]
        if not members:
            continue
        winner = max(members, key=lambda n: (_bits(configs[n]), -members.index(n)))
        spec = configs[winner].weight
        for name in members:
            if configs[name].weight != spec:
                out[name] = LayerConfig(weight=spec, act=configs[name].act)
            record = by_name.get(name)
            if record is None:
                continue
            if out[name] is not configs[name]:
                record.config = out[name].to_dict()
            record.metrics["tied_with"] = [n for n in group if n != name]
            if len(members) > 1:
                record.reason += (f"; weight tied with {', '.join(m for m in members if m != name)}"
                                  f": quantized once as {spec.qtype.name} "
                                  f"{spec.granularity.kind} (the stricter spec, {winner}'s)")
            if others:
                record.reason += (f"; its weight is also used by {', '.join(others)}, which "
                                  "stays float: the weight is stored in both forms")
    return out


def share_quantizers(model: nn.Module) -> None:
    """Give the fake-quant members of each tie one weight quantizer (the first member's)."""
    for group in tied_groups(model):
        quant = [model.get_submodule(n) for n in group]
        quant = [m for m in quant if getattr(m, "weight_quantizer", None) is not None]
        for member in quant[1:]:
            if member.weight_quantizer.spec == quant[0].weight_quantizer.spec:
                member.weight_quantizer = quant[0].weight_quantizer


def share_converted(model: nn.Module, groups: list[list[str]]) -> None:
    """After convert: the real modules of each group (``groups`` from :func:`tied_groups`,
    taken before convert) hold the first member's ``qdata``, ``scale`` and ``zero_point``
    tensors (equal by construction: one quantizer, one weight)."""
    for group in groups:
        real = [m for m in (model.get_submodule(n) for n in group)
                if isinstance(m, QuantizedModule)]
        for member in real[1:]:
            first = real[0]
            if (member.qdata.shape, member.qdata.dtype, member.scale.shape) != (
                    first.qdata.shape, first.qdata.dtype, first.scale.shape):
                continue
            for b in QUANT_BUFFERS:
                setattr(member, b, getattr(first, b))
