"""Complex activations (nn/complex.py): ComplexQuantizer, ComplexPoint and its fake-quant twin."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError, InputError, StateError
from lowbit.nn.complex import ComplexPoint, ComplexQuantizer, QuantComplexPoint
from lowbit.nn.tables import QAT_MODULES
from lowbit.primitives.complex import choose_complex_qparams, fake_quantize_complex
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerChannel, PerTensor, PerToken, Scheme, int8

A8 = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerTensor())
ACT_ONLY = LayerConfig(weight=None, act=A8)


def _z(shape=(4, 32), imag_gain=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), imag_gain * torch.randn(shape, generator=g))


def _calibrated(quantizer, *batches):
    quantizer.start_observing()
    for z in batches:
        quantizer(z)
    return quantizer.freeze()


def test_quantizer_equals_the_complex_primitive_bit_for_bit():
    z = _z()
    q = _calibrated(ComplexQuantizer(A8), z)
    reference = fake_quantize_complex(z, choose_complex_qparams(z, int8, Scheme.SYMMETRIC))
    assert torch.equal(q(z), reference)
    cqp = q.qparams()
    assert torch.equal(cqp.real.scale.reshape(()), z.real.abs().max() / 127)
    assert torch.equal(cqp.imag.scale.reshape(()), z.imag.abs().max() / 127)


def test_parts_get_separate_grids():
    z = _z(imag_gain=0.01)  # imaginary part 100x smaller than the real part
    q = _calibrated(ComplexQuantizer(A8), z)
    cqp = q.qparams()
    assert float(cqp.imag.scale) < float(cqp.real.scale) / 50
    out = q(z)
    shared_step = float(cqp.real.scale)
    # on the real part's grid the imaginary part would round to (nearly) all zeros
    assert (z.imag - out.imag).abs().max() <= float(cqp.imag.scale) / 2 + 1e-9
    assert (z.imag.abs() < shared_step / 2).float().mean() > 0.9


def test_observing_passes_through_and_accumulates_both_parts():
    q = ComplexQuantizer(A8).start_observing()
    a, b = _z(seed=1), 3 * _z(seed=2)
    assert torch.equal(q(a), a) and torch.equal(q(b), b)
    q.freeze()
    both = torch.cat([a, b])
    assert torch.equal(q.qparams().real.scale.reshape(()), both.real.abs().max() / 127)
    assert q.state == "frozen" and q.is_frozen and not q.observing


def test_disabled_quantizer_is_identity_and_uncalibrated_raises():
    z = _z()
    with pytest.raises(StateError, match="not calibrated"):
        ComplexQuantizer(A8)(z)
    q = _calibrated(ComplexQuantizer(A8), z)
    q.enabled = False
    assert torch.equal(q(z), z)
    summary = q.summary()
    assert summary["real"]["state"] == "frozen" and summary["sat_ratio"] == 0.0


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(3, dtype=torch.int64), "z"])
def test_real_input_is_rejected(bad):
    with pytest.raises(InputError, match="complex tensor"):
        ComplexQuantizer(A8).start_observing()(bad)
    with pytest.raises(InputError, match="complex tensor"):
        ComplexPoint()(bad)


@pytest.mark.parametrize("config, match", [
    (LayerConfig(weight=QuantSpec(granularity=PerChannel(0)), act=A8), "no weight"),
    (LayerConfig(weight=None, act=None), "no weight"),
    ("w8a8", "no weight"),
])
def test_quant_point_config_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        QuantComplexPoint(config)


def test_dynamic_spec_chooses_each_parts_grid_per_row():
    spec = QuantSpec(qtype=int8, granularity=PerToken(), dynamic=True)
    q = ComplexQuantizer(spec).start_observing()
    q.freeze()  # nothing to calibrate
    assert q.state == "dynamic"
    z = _z((3, 16))
    z[1] *= 100  # one loud row leaves the others' grids alone
    cqp = choose_complex_qparams(z, int8, Scheme.SYMMETRIC, PerToken())
    assert torch.equal(q(z), fake_quantize_complex(z, cqp))
    assert torch.equal(q.qparams(z).imag.scale, cqp.imag.scale)
    with pytest.raises(InputError, match="complex tensor"):
        q.qparams(z.real)


def test_from_float_to_float_and_table_entry():
    assert QAT_MODULES[ComplexPoint] is QuantComplexPoint
    point = ComplexPoint().eval()
    q = QuantComplexPoint.from_float(point, ACT_ONLY)
    assert not q.training and q.weight_quantizer is None
    assert type(q.to_float()) is ComplexPoint
    with pytest.raises(ConfigError, match="float ComplexPoint"):
        QuantComplexPoint.from_float(q, ACT_ONLY)


class _Toy(nn.Module):
    """A Linear whose output is rotated into a complex tensor, through a ComplexPoint."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.point = ComplexPoint()

    def forward(self, x):
        y = self.fc(x)
        return self.point(torch.complex(y, 0.1 * y.flip(-1)))


RECIPE = Recipe((Rule(ByType(("ComplexPoint",)), ACT_ONLY),
                 Rule(ByType(("Linear",)), LayerConfig(QuantSpec(granularity=PerChannel(0)),
                                                       A8))), "toy")


def _prepared(seed=0):
    torch.manual_seed(seed)
    model = lowbit.prepare(_Toy(), RECIPE)
    g = torch.Generator().manual_seed(1)
    with lowbit.calibrate(model):
        for _ in range(3):
            model(torch.randn(4, 8, generator=g))
    return model


def test_recipe_selects_the_point_and_convert_keeps_it_fake_quant():
    model = _prepared()
    assert isinstance(model.point, QuantComplexPoint)
    record = lowbit.lowbit_state(model).record("point")
    assert record.action == "quantized" and record.metrics["act_sat_ratio"] == 0.0
    x = torch.randn(2, 8)
    fake = model(x)
    converted = lowbit.convert(model)
    assert isinstance(converted.point, QuantComplexPoint)
    assert "stays fake-quant" in lowbit.lowbit_state(converted).record("point").reason
    # int8 real kernels vs fake-quant: equal up to float32 accumulation order
    torch.testing.assert_close(converted(x), fake, atol=1e-5, rtol=1e-4)


def test_a_weight_config_skips_the_point_with_a_reason():
    recipe = Recipe((Rule(ByType(("ComplexPoint",)), LayerConfig(QuantSpec(), A8)),), "bad")
    model = lowbit.prepare(_Toy(), recipe)
    record = lowbit.lowbit_state(model).record("point")
    assert record.action == "skipped" and "has no weight" in record.reason
    assert type(model.point) is ComplexPoint


def test_checkpoint_round_trip(tmp_path):
    model = _prepared()
    x = torch.randn(2, 8)
    lowbit.save(model, tmp_path / "ckpt")
    loaded = lowbit.load(tmp_path / "ckpt", _Toy())
    assert isinstance(loaded.point, QuantComplexPoint)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.point.act_quantizer.imag.scale, model.point.act_quantizer.imag.scale)
