"""Size budgets of a bit-width search: bytes, a ratio of the float size, or bits per weight.

All three are resolved against the layers being searched (their weights, scales, zero points
and biases; the rest of the model is the same whatever is chosen):

``Budget(bytes=N)``   at most N stored bytes for the searched layers;
``Budget(ratio=r)``   at most ``r x`` their float bytes (``0.25`` is a quarter of float);
``Budget(bits=b)``    at most ``b`` bits per weight on average, i.e. ``b x numel / 8`` bytes,
                      scales, zero points and biases included.

:func:`parse_budget` reads ``12345``, ``"800kB"``, ``"1.5MiB"``, ``"0.3x"`` and ``"4.5bits"``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}
_FIX = "e.g. 2000000, '1.5MiB', '0.3x' (a ratio of the float size) or '4.5bits'"


@dataclass(frozen=True)
class Budget:
    """Exactly one of ``bytes``, ``ratio`` or ``bits`` (see the module docstring)."""

    bytes: float | None = None
    ratio: float | None = None
    bits: float | None = None

    def __post_init__(self):
        given = {k: v for k, v in (("bytes", self.bytes), ("ratio", self.ratio),
                                   ("bits", self.bits)) if v is not None}
        if len(given) != 1:
            raise ConfigError("Budget", given or None, "exactly one of bytes, ratio, bits",
                              fix="e.g. Budget(bytes=2_000_000) or Budget(bits=4.5)")
        (key, value), = given.items()
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"Budget.{key}", value, "a finite number > 0", fix=_FIX)

    def resolve(self, float_bytes: float, numel: int) -> float:
        """The budget in bytes for searched layers of ``float_bytes`` and ``numel`` weights."""
        if self.bytes is not None:
            return float(self.bytes)
        if self.ratio is not None:
            return self.ratio * float_bytes
        return self.bits * numel / 8.0

    def describe(self) -> str:
        if self.bytes is not None:
            return f"{self.bytes:.0f} bytes"
        if self.ratio is not None:
            return f"{self.ratio:g} x the float size"
        return f"{self.bits:g} bits per weight"


def parse_budget(value: Any) -> Budget:
    """A :class:`Budget` from a Budget, a byte count or a string (see the module docstring)."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Budget(bytes=value)
    if not isinstance(value, str):
        raise ConfigError("budget", value, "bytes (int), a Budget or a string", fix=_FIX)
    text = value.strip().lower().replace(" ", "")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)([a-z%]*)", text)
    if match is None:
        raise ConfigError("budget", value, "a number with an optional unit", fix=_FIX)
    number, unit = float(match.group(1)), match.group(2)
    if unit in ("x", "ratio"):
        return Budget(ratio=number)
    if unit == "%":
        return Budget(ratio=number / 100.0)
    if unit in ("bits", "bit", "bpw"):
        return Budget(bits=number)
    if unit in _UNITS:
        return Budget(bytes=number * _UNITS[unit])
    raise ConfigError("budget", value, f"a unit among {sorted(k for k in _UNITS if k)}, x, %, "
                      "bits", fix=_FIX)
