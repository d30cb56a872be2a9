"""What every layer-wise algorithm is: a configured object that changes one block.

An algorithm is a frozen dataclass with a registered ``name`` and a ``stage`` saying when it
runs in :func:`lowbit.quantize_model`:

* ``"float"`` — on the float model before it is prepared: ``apply_float(model, calib_data)``
  rewrites the model (BatchNorm folding, cross-layer equalisation) and returns, per layer
  name, the metrics to write into that layer's record;
* ``"block"`` (the default) — after calibration, block by block: ``apply_block(ctx)`` gets a
  :class:`~lowbit.algorithms._runner.BlockContext` and may run the block over its inputs (with
  hooks) and change the weights and weight qparams of the lowbit layers inside it;
* ``"quantized"`` — after calibration and the block algorithms, on the whole fake-quant
  model: ``apply_quantized(qmodel, calib_data, record, reference)`` (bias correction,
  BatchNorm re-estimation, the affine patch), ``record(name)`` giving a layer's LayerRecord
  or None; ``reference`` is a copy of the model taken right after calibration (before any
  weight changed; fake quantization off gives the float model) when the class sets
  ``wants_float_copy``, else None.  Configs
are data: ``to_dict``/``from_dict`` round-trip, and :func:`make_algorithm` builds one from a
name, a dict or an instance.  New algorithms add a registry entry with
:func:`register_algorithm`; nothing dispatches on names elsewhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from ..errors import ConfigError

#: when an algorithm runs, in this order (see the module doc)
STAGES = ("float", "block", "quantized")
#: name -> algorithm class (filled by :func:`register_algorithm`).
ALGORITHMS: dict[str, type["Algorithm"]] = {}


class Algorithm:
    """Base class; subclasses are frozen dataclasses with a class attribute ``name``."""

    name: ClassVar[str] = ""
    #: when it runs: one of :data:`STAGES`
    stage: ClassVar[str] = "block"
    #: a "quantized"-stage algorithm that compares against the float model sets this
    wants_float_copy: ClassVar[bool] = False
    #: True when the algorithm reads ``ctx.reference_inputs`` (the runner then keeps them).
    wants_reference: ClassVar[bool] = False

    def apply_block(self, ctx) -> None:
        """Change the block ``ctx.module`` in place (its inputs are ``ctx.inputs``)."""
        raise NotImplementedError

    def apply_float(self, model, calib_data) -> dict[str, dict]:
        """Rewrite the float ``model`` in place; ``{layer name: metrics}`` for its records."""
        raise NotImplementedError

    def apply_quantized(self, qmodel, calib_data, record, reference=None) -> None:
        """Change the calibrated fake-quant ``qmodel`` in place, writing into ``record(name)``."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """``{"name": ..., <fields>}``, JSON-serializable."""
        return {"name": self.name, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Algorithm":
        fields = {f.name for f in dataclasses.fields(cls)}
        args = {k: v for k, v in data.items() if k != "name"}
        unknown = sorted(set(args) - fields)
        if unknown:
            raise ConfigError(f"{cls.name} options", unknown, f"only {sorted(fields)}",
                              fix="remove the unknown keys (check their spelling)")
        return cls(**args)


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    assert cls.name and dataclasses.is_dataclass(cls), "an algorithm is a named dataclass"
    assert cls.stage in STAGES, f"algorithm stage {cls.stage!r} not in {STAGES}"
    existing = ALGORITHMS.get(cls.name)
    assert existing is None or existing.__qualname__ == cls.__qualname__, \
        f"algorithm name {cls.name!r} is already taken"
    ALGORITHMS[cls.name] = cls
    return cls


def make_algorithm(spec: Any) -> Algorithm:
    """An algorithm from a registered name (``"gptq"``), a dict (``{"name": "gptq",
    "damp": 0.01}``) or an :class:`Algorithm` instance (returned as it is)."""
    if isinstance(spec, Algorithm):
        return spec
    data = {"name": spec.strip().lower()} if isinstance(spec, str) else spec
    if isinstance(data, Mapping) and data.get("name") in ALGORITHMS:
        return ALGORITHMS[data["name"]].from_dict(data)
    raise ConfigError("algorithm", spec, f"a name in {sorted(ALGORITHMS)}, a dict with one of "
                      "them as 'name', or an algorithm object",
                      fix="e.g. algorithms=['gptq'] or [lowbit.GPTQ(damp=0.01)]")


def parse_algorithms(specs: Any) -> list[Algorithm]:
    """A list of algorithms from a list (or a comma-separated string) of specs."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    if isinstance(specs, (Algorithm, Mapping)):
        specs = [specs]
    if not isinstance(specs, (list, tuple)):
        raise ConfigError("algorithms", specs, "a list of names, dicts or algorithm objects",
                          fix="e.g. algorithms=['smoothquant', 'gptq']")
    return [make_algorithm(s) for s in specs]
