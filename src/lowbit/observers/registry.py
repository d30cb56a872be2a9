"""The observer registry: calibration method name -> Observer class.

Method strings are parsed only by :func:`lowbit.config.parse_method`; a
``QuantSpec`` carries the canonical name (``spec.method_name``) and its
parameters (``spec.method_params``), and :func:`make_observer` looks the name up here.
"""

from __future__ import annotations

from typing import Callable

from ..config import CALIB_METHODS, QuantSpec
from ..errors import ConfigError
from .base import Observer

#: canonical method name -> Observer subclass
OBSERVERS: dict[str, type[Observer]] = {}


def register_observer(name: str, *, replace: bool = False) -> Callable[[type[Observer]], type[Observer]]:
    """Class decorator registering an :class:`Observer` subclass under method ``name``.

    ``name`` must be a canonical method of :data:`lowbit.config.CALIB_METHODS` (the
    only names a QuantSpec can carry); registering a name twice needs ``replace=True``.
    """
    if name not in CALIB_METHODS:
        raise ConfigError("observer name", name, f"one of {CALIB_METHODS}",
                          fix="register under a canonical calibration method name")

    def decorate(cls: type[Observer]) -> type[Observer]:
        if not (isinstance(cls, type) and issubclass(cls, Observer)):
            raise ConfigError("observer class", cls, "a subclass of lowbit.observers.Observer",
                              fix="derive the class from Observer")
        if name in OBSERVERS and OBSERVERS[name] is not cls and not replace:
            raise ConfigError("observer name", name, "a method not registered yet",
                              fix=f"pass replace=True to override {OBSERVERS[name].__name__}")
        cls.method = name
        OBSERVERS[name] = cls
        return cls

    return decorate


def make_observer(spec: QuantSpec) -> Observer:
    """Build the observer for ``spec.method`` (parameters come from ``spec.method_params``)."""
    if not isinstance(spec, QuantSpec):
        raise ConfigError("spec", spec, "a lowbit.QuantSpec",
                          fix="pass QuantSpec(qtype=..., scheme=..., method=...)")
    name = spec.method_name
    if name not in OBSERVERS:
        raise ConfigError("method", spec.method, f"a registered observer: {sorted(OBSERVERS)}",
                          fix="import the module that registers it or choose another method")
    return OBSERVERS[name](spec)
