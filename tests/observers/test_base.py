"""The Observer contract, checked for every registered method."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lowbit.config import QuantSpec
from lowbit.errors import CheckpointError, ConfigError, InputError, StateError
from lowbit.observers import OBSERVERS, Observer, make_observer
from lowbit.observers.moving_average import MovingAverageObserver
from lowbit.primitives.affine import fake_quantize
from lowbit.types import PerChannel

METHODS = ("minmax", "moving_average", "percentile:99.9", "mse", "entropy", "auto")


def _data(seed: int, n: int = 4096, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * scale


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_canonical_method_is_tested_here():
    names = {QuantSpec(method=m).method_name for m in METHODS}
    assert names == set(OBSERVERS), "each registered observer must go through the contract tests"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises(method, bad):
    obs = make_observer(QuantSpec(method=method))
    x = _data(0, 64)
    x[7] = bad
    with pytest.raises(InputError, match="1 NaN/Inf value"):
        obs.update(x)
    assert obs.n_seen == 0, "a rejected tensor must leave the observer untouched"


@pytest.mark.parametrize("method", METHODS)
def test_non_tensor_input_raises(method):
    with pytest.raises(InputError, match="expects a torch.Tensor"):
        make_observer(QuantSpec(method=method)).update([1.0, 2.0])


@pytest.mark.parametrize("method", METHODS)
def test_use_before_data_raises_state_error(method):
    obs = make_observer(QuantSpec(method=method))
    with pytest.raises(StateError, match="before any data was observed"):
        obs.qparams()
    with pytest.raises(StateError, match="before any data was observed"):
        obs.clip_range()
    assert obs.sat_ratio == 0.0, "nothing observed, nothing saturated"
    assert obs.summary()["lo"] is None and obs.summary()["n_seen"] == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
@pytest.mark.parametrize("value", [0.0, 3.5, -2.25])
def test_constant_inputs_give_finite_scales(method, scheme, value):
    obs = make_observer(QuantSpec(method=method, scheme=scheme))
    x = torch.full((1000,), value)
    obs.update(x)
    obs.update(x)
    qp = obs.qparams()
    assert torch.isfinite(qp.scale).all() and (qp.scale > 0).all(), "scale must stay usable"
    err = (fake_quantize(x, qp) - x).abs().max()
    assert err <= qp.scale.max() / 2 + 1e-6, "a constant must land within half a step"


@pytest.mark.parametrize("method", METHODS)
def test_empty_and_scalar_tensors(method):
    obs = make_observer(QuantSpec(method=method))
    obs.update(torch.zeros(0, 5))
    assert obs.n_seen == 0, "an empty tensor carries no values"
    obs.update(torch.tensor(1.5))
    assert obs.n_seen == 1 and torch.isfinite(obs.qparams().scale).all()


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip_resumes_identically(method, tmp_path):
    spec = QuantSpec(method=method)
    a, b = make_observer(spec), make_observer(spec)
    a.update(_data(1))
    a.update(_data(2, scale=3.0))
    state = a.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values()), "state is tensors only"
    assert state["n_seen"].dim() == 0, "scalars are 0-d tensors"
    path = tmp_path / "obs.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    b.load_state_dict(load_file(str(path)))
    for x in (_data(3, scale=5.0), _data(4, scale=0.5)):
        a.update(x)
        b.update(x)
    assert _equal_states(a.state_dict(), b.state_dict()), "resumed calibration must match"
    qa, qb = a.qparams(), b.qparams()
    assert torch.equal(qa.scale, qb.scale) and torch.equal(qa.zero_point, qb.zero_point)
    assert a.summary() == b.summary()


@pytest.mark.parametrize("method", METHODS)
def test_load_state_dict_rejects_foreign_state(method):
    obs = make_observer(QuantSpec(method=method))
    obs.update(_data(0))
    state = obs.state_dict()
    with pytest.raises(CheckpointError, match="expects a dict of tensors"):
        obs.load_state_dict([1, 2])
    broken = dict(state)
    broken.pop("n_seen")
    with pytest.raises(CheckpointError, match=r"missing keys \['n_seen'\]"):
        obs.load_state_dict(broken)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra'\]"):
        obs.load_state_dict({**state, "extra": torch.zeros(1)})


def test_load_state_dict_rejects_other_settings():
    a = MovingAverageObserver(QuantSpec(method="ema"), averaging_constant=0.1)
    a.update(_data(0))
    b = MovingAverageObserver(QuantSpec(method="ema"), averaging_constant=0.2)
    with pytest.raises(CheckpointError, match="saved with averaging_constant=0.1"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("method", METHODS)
def test_merge_with_empty_observers(method):
    spec = QuantSpec(method=method)
    full, empty = make_observer(spec), make_observer(spec)
    full.update(_data(0))
    before = full.state_dict()
    full.merge(empty)
    assert _equal_states(full.state_dict(), before), "merging nothing changes nothing"
    empty.merge(full)
    assert _equal_states(empty.state_dict(), before), "merging into empty copies"


@pytest.mark.parametrize("method", METHODS)
def test_merge_rejects_other_kinds(method):
    obs = make_observer(QuantSpec(method=method))
    other_method = "entropy" if QuantSpec(method=method).method_name == "minmax" else "minmax"
    with pytest.raises(ConfigError, match="merge observers of the same calibration method"):
        obs.merge(make_observer(QuantSpec(method=other_method)))
    with pytest.raises(ConfigError, match="merge only observers built from the same QuantSpec"):
        obs.merge(make_observer(QuantSpec(method=method, qtype="int4")))


@pytest.mark.parametrize("method", ["minmax", "moving_average", "mse"])
def test_block_layout_must_not_change(method):
    a = make_observer(QuantSpec(method=method, granularity=PerChannel(0)))
    a.update(torch.randn(4, 8))
    a.update(torch.randn(4, 1, 16))           # (4, 1, 1) blocks agree with (4, 1) up to 1s
    with pytest.raises(InputError, match="same block layout"):
        a.update(torch.randn(5, 8))
    b = make_observer(QuantSpec(method=method, granularity=PerChannel(0)))
    b.update(torch.randn(6, 8))
    with pytest.raises(StateError, match="block layouts"):
        a.merge(b)


@pytest.mark.parametrize("method", METHODS)
def test_fixed_point_uses_its_constant_scale_and_reports_saturation(method):
    spec = QuantSpec(method=method, qtype="int8", scheme="fixed_point", frac_bits=4)
    obs = make_observer(spec)
    x = _data(5, scale=6.0)
    obs.update(x[:2000])
    obs.update(x[2000:])
    qp = obs.qparams()
    assert torch.equal(qp.scale, torch.full_like(qp.scale, 2.0 ** -4)), "Q3.4 step is 1/16"
    assert torch.equal(qp.zero_point, torch.zeros_like(qp.zero_point))
    lo, hi = -128 / 16, 127 / 16
    expected = float(((x < lo) | (x > hi)).float().mean())
    assert obs.sat_ratio == pytest.approx(expected, abs=1e-12)
    assert expected > 0.1, "the fixture must actually saturate Q3.4"


@pytest.mark.parametrize("method", METHODS)
def test_negative_values_on_an_unsigned_symmetric_grid_are_saturated(method):
    obs = make_observer(QuantSpec(method=method, qtype="uint8"))
    x = torch.cat([torch.linspace(0.0, 1.0, 300), -torch.linspace(0.1, 1.0, 100)])
    obs.update(x)
    lo, hi = obs.clip_range()
    assert float(lo) == 0.0, "an unsigned SYMMETRIC grid covers [0, hi]"
    assert obs.sat_ratio >= 100 / 400, "the 100 negative values cannot be represented"


@pytest.mark.parametrize("method", METHODS)
def test_summary_is_json_and_complete(method):
    obs = make_observer(QuantSpec(method=method))
    obs.update(_data(0))
    s = json.loads(json.dumps(obs.summary()))
    assert {"method", "lo", "hi", "sat_ratio", "n_seen"} <= set(s)
    assert s["n_seen"] == 4096 and s["method"] == QuantSpec(method=method).method
    assert s["lo"] <= 0.0 <= s["hi"]


def test_spec_must_be_a_quantspec():
    with pytest.raises(ConfigError, match="a lowbit.QuantSpec"):
        Observer("int8")
