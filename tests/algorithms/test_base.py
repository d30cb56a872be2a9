"""The algorithm registry: names, dicts and objects; config round trips; errors."""

import pytest

import lowbit
from lowbit.algorithms.base import ALGORITHMS, make_algorithm, parse_algorithms
from lowbit.errors import ConfigError


def test_builtin_algorithms_are_registered_by_name():
    assert {"gptq", "awq", "smoothquant"} <= set(ALGORITHMS)
    assert lowbit.ALGORITHMS is ALGORITHMS


def test_names_dicts_and_objects_give_the_same_algorithm():
    configured = lowbit.GPTQ(damp=0.05, act_order=True)
    assert make_algorithm(configured) is configured
    assert make_algorithm(configured.to_dict()) == configured
    assert make_algorithm(" GPTQ ") == lowbit.GPTQ()
    assert parse_algorithms("smoothquant,gptq") == [lowbit.SmoothQuant(), lowbit.GPTQ()]
    assert parse_algorithms(None) == [] and parse_algorithms({"name": "awq"}) == [lowbit.AWQ()]


@pytest.mark.parametrize("spec,match", [
    ("nope", r"algorithm='nope'.*awq.*gptq.*smoothquant"),
    ({"name": "gptq", "dampp": 0.1}, r"gptq options=\['dampp'\]"),
    (3, "algorithm=3"),
])
def test_unknown_algorithms_and_options_are_rejected(spec, match):
    with pytest.raises(ConfigError, match=match):
        make_algorithm(spec)


def test_parse_algorithms_rejects_a_non_list():
    with pytest.raises(ConfigError, match="algorithms=3"):
        parse_algorithms(3)
