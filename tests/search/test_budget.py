"""Budgets: bytes, ratio of the float size, bits per weight; parsed from strings."""

import pytest

from lowbit.errors import ConfigError
from lowbit.search.budget import Budget, parse_budget


@pytest.mark.parametrize("text, expected", [
    (12345, Budget(bytes=12345)), ("800kB", Budget(bytes=800e3)),
    ("1.5MiB", Budget(bytes=1.5 * 2**20)), ("0.3x", Budget(ratio=0.3)),
    ("25%", Budget(ratio=0.25)), ("4.5bits", Budget(bits=4.5)), ("2e3", Budget(bytes=2000.0)),
])
def test_parse(text, expected):
    assert parse_budget(text) == expected


def test_resolve_against_the_searched_layers():
    assert Budget(bytes=100).resolve(1000, 250) == 100
    assert Budget(ratio=0.25).resolve(1000, 250) == 250
    assert Budget(bits=4).resolve(1000, 250) == 125  # 4 bits x 250 weights / 8


@pytest.mark.parametrize("bad, match", [
    ("12 parsecs", "unit"), ("-3x", "number"), (1.5, "bytes"), (True, "bytes"), ("x", "number"),
])
def test_bad_budgets_are_rejected(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_budget(bad)


def test_exactly_one_kind():
    with pytest.raises(ConfigError, match="exactly one"):
        Budget(bytes=1, bits=2)
    with pytest.raises(ConfigError, match="> 0"):
        Budget(ratio=0.0)
