"""Errors lowbit raises at its boundary.

Every user-facing error names the offending field, the bad value, what is
allowed and how to fix it.  ``assert`` is reserved for lowbit's own invariants.
"""

from __future__ import annotations

from typing import Any


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class ConfigError(LowbitError, ValueError):
    """A configuration value is invalid.

    The message has the form ``<field>=<value!r> is invalid: allowed <allowed>. Fix: <fix>``.
    """

    def __init__(self, field: str, value: Any, allowed: str, fix: str | None = None):
        self.field = field
        self.value = value
        self.allowed = allowed
        self.fix = fix
        msg = f"{field}={value!r} is invalid: allowed {allowed}."
        if fix:
            msg += f" Fix: {fix}"
        super().__init__(msg)


class InputError(LowbitError, ValueError):
    """A tensor or other runtime input cannot be processed (NaN/Inf, wrong shape...)."""


class StateError(LowbitError, RuntimeError):
    """An object was used in the wrong order (e.g. converted before calibration)."""


class CheckpointError(LowbitError, ValueError):
    """A checkpoint file is missing, corrupt, truncated or does not match the model."""


class KernelUnavailableError(LowbitError, RuntimeError):
    """A kernel path was requested by name but cannot run here."""


class ExportError(LowbitError, RuntimeError):
    """A model or module cannot be exported."""


def check_choice(field: str, value: Any, choices, fix: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(field, value, f"one of {allowed}", fix or f"use one of {allowed}")


def check_int_range(field: str, value: Any, lo: int, hi: int, fix: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(field, value, f"an integer in [{lo}, {hi}]",
                          fix or f"pass an integer between {lo} and {hi}")
