"""Errors name the field, the bad value, what is allowed and how to fix it."""

from __future__ import annotations

import pytest

import lowbit
from lowbit.errors import (CheckpointError, ConfigError, ExportError, InputError,
                           KernelUnavailableError, LowbitError, StateError, check_choice,
                           check_int_range)


def test_config_error_message_names_field_value_allowed_and_fix():
    err = ConfigError("QuantSpec.method", "kmeans", "one of 'minmax', 'mse'", fix="use 'mse'")
    assert str(err) == ("QuantSpec.method='kmeans' is invalid: allowed one of 'minmax', 'mse'. "
                        "Fix: use 'mse'")
    assert (err.field, err.value, err.allowed, err.fix) == (
        "QuantSpec.method", "kmeans", "one of 'minmax', 'mse'", "use 'mse'")


def test_config_error_without_fix_and_with_odd_values():
    assert str(ConfigError("bits", 3.5, "an integer")) == "bits=3.5 is invalid: allowed an integer."
    assert "Fix" not in str(ConfigError("bits", 3, "an integer", fix=""))
    # repr() keeps the value's type visible: the string '8' is not the number 8
    assert str(ConfigError("bits", "8", "an integer")).startswith("bits='8' is invalid")
    assert str(ConfigError("x", None, "a tensor")).startswith("x=None is invalid")


@pytest.mark.parametrize("cls,bases", [
    (ConfigError, (LowbitError, ValueError)),
    (InputError, (LowbitError, ValueError)),
    (StateError, (LowbitError, RuntimeError)),
    (CheckpointError, (LowbitError, ValueError)),
    (KernelUnavailableError, (LowbitError, RuntimeError)),
    (ExportError, (LowbitError, RuntimeError)),
])
def test_every_error_is_a_lowbit_error_and_a_builtin_one(cls, bases):
    assert all(issubclass(cls, b) for b in bases), "callers may catch the builtin kind"
    assert getattr(lowbit, cls.__name__) is cls, "exported from lowbit"
    assert issubclass(LowbitError, Exception)


def test_check_choice():
    check_choice("backend", "native", ("reference", "native"))  # no error
    with pytest.raises(ConfigError, match=r"^backend='cuda' is invalid: allowed one of "
                                          r"'reference', 'native'\. Fix: use one of "
                                          r"'reference', 'native'$"):
        check_choice("backend", "cuda", ("reference", "native"))
    with pytest.raises(ConfigError, match=r"Fix: install the extra$"):
        check_choice("backend", "x", ["a"], fix="install the extra")


@pytest.mark.parametrize("value", [2, 5, 16])
def test_check_int_range_accepts_the_closed_interval(value):
    check_int_range("bits", value, 2, 16)


@pytest.mark.parametrize("value", [1, 17, 8.0, True, False, "8", None])
def test_check_int_range_rejects_other_values(value):
    with pytest.raises(ConfigError, match=r"^bits=.* is invalid: allowed an integer in \[2, 16\]\. "
                                          r"Fix: pass an integer between 2 and 16$"):
        check_int_range("bits", value, 2, 16)
    with pytest.raises(ConfigError, match=r"Fix: use 8$"):
        check_int_range("bits", value, 2, 16, fix="use 8")

