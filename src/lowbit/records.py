"""``LayerRecord``: what happened to one layer, and why.

Nothing lowbit does to a layer is silent: quantized, kept float, skipped,
padded or sent to a fallback kernel, each becomes a record that reports read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ACTIONS = ("quantized", "float", "skipped", "fallback")


@dataclass
class LayerRecord:
    """One layer's story.

    name: qualified module name. module_type: class name of the float module.
    action: one of :data:`ACTIONS`. reason: a sentence a person can read.
    config: the LayerConfig as a dict (None when float). backend/kernel: the
    kernel chosen for it and why (``kernel_reason``). metrics: numbers such as
    ``sqnr_db`` or ``sat_ratio`` gathered along the way.
    """

    name: str
    module_type: str
    action: str
    reason: str = ""
    config: dict | None = None
    backend: str | None = None
    kernel: str | None = None
    kernel_reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        assert self.action in ACTIONS, f"LayerRecord.action {self.action!r} not in {ACTIONS}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LayerRecord":
        return cls(**data)
