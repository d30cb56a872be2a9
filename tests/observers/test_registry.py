"""The method-name registry and make_observer."""

from __future__ import annotations

import pytest

from lowbit.config import CALIB_METHODS, QuantSpec
from lowbit.errors import ConfigError
from lowbit.observers import (OBSERVERS, AutoObserver, EntropyObserver, MinMaxObserver,
                              MovingAverageObserver, MSEObserver, Observer, PercentileObserver,
                              make_observer, register_observer)
from lowbit.types import PerChannel, PerGroup, PerToken

EXPECTED = {"minmax": MinMaxObserver, "moving_average": MovingAverageObserver,
            "percentile": PercentileObserver, "mse": MSEObserver, "entropy": EntropyObserver,
            "auto": AutoObserver}


def test_every_canonical_method_has_an_observer():
    assert set(OBSERVERS) == set(CALIB_METHODS)
    for name, cls in EXPECTED.items():
        assert OBSERVERS[name] is cls and cls.method == name


@pytest.mark.parametrize("text,cls", [("maxabs", MinMaxObserver), ("kl", EntropyObserver),
                                      ("ema", MovingAverageObserver), ("p99", PercentileObserver),
                                      ("MSE", MSEObserver), ("auto", AutoObserver)])
def test_make_observer_follows_parse_method(text, cls):
    obs = make_observer(QuantSpec(method=text))
    assert type(obs) is cls


def test_percentile_parameter_comes_from_the_spec():
    assert make_observer(QuantSpec(method="p99")).p == 99.0
    assert make_observer(QuantSpec(method="percentile:99.5")).p == 99.5
    assert make_observer(QuantSpec(method="percentile")).p == 99.99


def test_make_observer_needs_a_spec():
    with pytest.raises(ConfigError, match="a lowbit.QuantSpec"):
        make_observer("minmax")


def test_make_observer_unregistered_method(monkeypatch):
    monkeypatch.delitem(OBSERVERS, "entropy")
    with pytest.raises(ConfigError, match="a registered observer"):
        make_observer(QuantSpec(method="entropy"))


def test_register_observer_validates(monkeypatch):
    with pytest.raises(ConfigError, match="register under a canonical calibration method"):
        register_observer("p95")
    with pytest.raises(ConfigError, match="derive the class from Observer"):
        register_observer("minmax")(dict)

    class Other(Observer):
        pass

    with pytest.raises(ConfigError, match="pass replace=True to override MinMaxObserver"):
        register_observer("minmax")(Other)
    monkeypatch.setitem(OBSERVERS, "minmax", MinMaxObserver)
    assert register_observer("minmax", replace=True)(Other) is Other
    assert type(make_observer(QuantSpec())) is Other


@pytest.mark.parametrize("method", ["percentile", "entropy", "auto"])
@pytest.mark.parametrize("gran", [PerChannel(0), PerGroup(8), PerToken()])
def test_histogram_methods_are_per_tensor(method, gran):
    with pytest.raises(ConfigError, match=r"use PerTensor\(\) for this method"):
        make_observer(QuantSpec(method=method, granularity=gran))
