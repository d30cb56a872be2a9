"""``LayerRecord``: what happened to one layer, and why.

Nothing lowbit does to a layer is silent: quantized, kept float, skipped,
padded or sent to a fallback kernel, each becomes a record that reports read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

ACTIONS = ("quantized", "float", "skipped", "fallback")


@dataclass
class LayerRecord:
    """One layer's story.

    name: qualified module name. module_type: class name of the float module.
    action: one of :data:`ACTIONS`. reason: a sentence a person can read.
    config: the LayerConfig as a dict (None when float).
    fq_impl: how its fake quantization computes (``reference`` or ``fused``), and
    ``fq_fallback``: why a quantizer ran the reference instead of the fused op (None if none).
    kernel_path: the path(s) its converted module runs (``integer``, ``dense``,
    ``reference``, ``integer+dense``), ``kernel``: what runs, ``kernel_reason``: why.
    metrics: numbers such as ``sqnr_db`` or ``sat_ratio`` gathered along the way.
    """

    name: str
    module_type: str
    action: str
    reason: str = ""
    config: dict | None = None
    fq_impl: str | None = None
    fq_fallback: str | None = None
    kernel_path: str | None = None
    kernel: str | None = None
    kernel_reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.action, str) or self.action not in ACTIONS:
            raise ConfigError("LayerRecord.action", self.action, f"one of {ACTIONS}",
                              fix="records are written by lowbit; load them with "
                                  "LayerRecord.from_dict(record.to_dict())")
        for name in ("name", "module_type"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"LayerRecord.{name}", getattr(self, name), "a string",
                                  fix="records are written by lowbit; pass the layer's name "
                                      "and module type as strings")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LayerRecord":
        """A record from :meth:`to_dict`'s output, including records written before
        ``fq_impl`` and ``kernel_path`` were split out of one ``backend`` field."""
        if not isinstance(data, dict):
            raise ConfigError("LayerRecord data", type(data).__name__, "a dict from "
                              "LayerRecord.to_dict()", fix="pass one record's dict, e.g. from "
                              "the records list of a saved manifest")
        unknown = sorted(set(upgrade_record_dict(data)) - set(cls.__dataclass_fields__))
        missing = [k for k in ("name", "module_type", "action") if k not in data]
        if unknown or missing:
            raise ConfigError("LayerRecord data", sorted(data), "the keys LayerRecord.to_dict() "
                              "writes", fix=f"remove {unknown}" if unknown else
                              f"add the missing key(s) {missing}")
        return cls(**upgrade_record_dict(data))


def _split_backend(backend: str | None, kernel: str | None) -> dict:
    """Old records had one ``backend`` field: the fake-quant one (``reference``/``native``)
    until convert overwrote it with the kernel's (``native+dense``-style, with ``kernel``
    set).  The fake-quant fallback reason, if any, was lost in ``kernel_reason`` then."""
    if backend is None:
        return {}
    if kernel is not None:  # written by convert: the kernel's path(s)
        paths = [{"native": "integer"}.get(p, p) for p in backend.split("+")]
        return {"kernel_path": "+".join(paths)}
    return {"fq_impl": {"native": "fused"}.get(backend, backend)}


def upgrade_record_dict(data: dict) -> dict:
    """``data`` with a pre-split ``backend`` field replaced by the fields it meant."""
    data = dict(data)
    if "backend" in data:
        kernel = data.get("kernel")
        if kernel is None and data.get("kernel_reason"):  # a fake-quant fallback reason
            data["fq_fallback"] = data.pop("kernel_reason")
        data.update(_split_backend(data.pop("backend"), kernel))
    return data
