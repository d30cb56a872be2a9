"""lowbit.zoo.birman_schwinger_quant: the quantized core's recipe, workflow and diagnostics.

The cores here are built from fixed seeds (no training), so every number asserted is what
lowbit computes on this machine for those weights; the bounds are the seed's error targets.
"""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError, StateError
from lowbit.nn import ComplexPoint, QuantComplexPoint, QuantizedLinear, QuantLinear
from lowbit.types import PerChannel, PerGroup, PerTensor, PerToken, Scheme
from lowbit.zoo.birman_schwinger import BirmanSchwingerCore, potential_batches
from lowbit.zoo.birman_schwinger_quant import (MODES, QuantizedBirmanSchwingerCore,
                                               birman_schwinger_recipe,
                                               create_quantized_birman_schwinger,
                                               relative_error)

N = 128
SEED_KEYS = {"quantization_mode", "bits", "calibrated", "qat_enabled", "v_quantization_error",
             "G_real_quantization_error", "G_imag_quantization_error"}


def _calibrated(mode="ptq_int8", n_batches=8, **kwargs):
    model = create_quantized_birman_schwinger(n_seq=N, mode=mode, epsilon=1.0, **kwargs)
    model.start_calibration()
    for v in potential_batches(n_batches, batch=8, n_seq=N, seed=0):
        model(v)
    model.end_calibration()
    return model


def _held_out():
    return potential_batches(1, batch=16, n_seq=N, seed=123)[0]


def test_recipe_quantizes_linears_the_complex_point_and_out_weight_only():
    core = BirmanSchwingerCore(N)
    for mode in MODES:
        recipe = birman_schwinger_recipe(mode, 128)
        holder = torch.nn.Module()
        holder.core = core
        configs, records = lowbit.model.select.select_layers(holder, recipe)
        assert set(configs) == {"core.proj", "core.out", "core.g_point"}
        weight = configs["core.proj"].weight
        expected = PerGroup(128, axis=1) if mode.endswith("4") else PerChannel(0)
        assert weight.qtype.bits == int(mode[-1]) and weight.granularity == expected
        assert configs["core.proj"].act.granularity == PerTensor()
        assert configs["core.out"].act is None and configs["core.out"].weight == weight
        assert configs["core.g_point"].weight is None
        assert configs["core.g_point"].act.qtype.bits == 8
        assert configs["core.g_point"].act.dynamic
        assert configs["core.g_point"].act.granularity == PerToken()
        assert weight.scheme is (Scheme.AFFINE if mode.endswith("4") else Scheme.SYMMETRIC)
    causal = birman_schwinger_recipe("ptq_int8", causal=True)
    point = causal.rules[0].config.act
    assert not point.dynamic and point.granularity == PerChannel(1)
    with pytest.raises(ConfigError, match="causal"):
        birman_schwinger_recipe("ptq_int8", causal=1)


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_runs_the_workflow_with_diagnostics(mode):
    model = _calibrated(mode)
    assert isinstance(model.net.core.proj, QuantLinear)
    assert isinstance(model.net.core.g_point, QuantComplexPoint)
    if mode.startswith("qat"):
        model.enable_qat()
        features, diag = model(_held_out(), return_diagnostics=True)
        assert diag["qat_enabled"] is True and model.training
        (features.real.square().mean() + features.imag.square().mean()).backward()
        grad = model.net.core.proj.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        model.eval()
    model.apply_ptq()
    model.eval()
    assert isinstance(model.net.core.proj, QuantizedLinear)
    features, diag = model(_held_out(), return_diagnostics=True)
    assert features.dtype == torch.complex64 and features.shape == (16, N)
    assert SEED_KEYS <= set(diag)
    assert diag["quantization_mode"] == mode and diag["bits"] == int(mode[-1])
    assert diag["calibrated"] and diag["ptq_applied"] and not diag["qat_enabled"]
    assert diag["group_size"] == 128
    assert 0 < diag["v_quantization_error"] < 0.02  # int8 per-tensor input
    assert 0 <= diag["v_sat_ratio"] < 0.01  # held-out values past the calibrated range
    assert diag["G_sqnr_db"] > 10
    layers = diag["layers"]
    assert set(layers) == {"core.proj", "core.out", "core.g_point"}
    assert layers["core.proj"]["act_sat_ratio"] == 0.0
    for part in ("real", "imag"):  # int8 per row: about 1 %
        assert 0 < diag[f"g_{part}_quantization_error"] < 0.02
    assert layers["core.proj"]["weight_bytes"] > 0


@pytest.mark.parametrize("mode, bound", [("ptq_int8", 0.05), ("ptq_int4", 0.15)])
def test_output_error_meets_the_seed_targets_on_held_out_potentials(mode, bound):
    model = _calibrated(mode)
    model.apply_ptq()
    _, diag = model(_held_out(), return_diagnostics=True)
    assert 0 < diag["G_real_quantization_error"] < bound
    assert 0 < diag["G_imag_quantization_error"] < bound


def test_diagnostic_errors_are_the_relative_errors_against_the_float_core():
    float_core = BirmanSchwingerCore(N, seed=4)
    model = create_quantized_birman_schwinger(N, "ptq_int8", core=float_core)
    model.start_calibration()
    for v in potential_batches(4, batch=8, n_seq=N):
        model(v)
    model.end_calibration()
    v = _held_out()
    features, diag = model(v, return_diagnostics=True)
    with torch.no_grad():
        ref = float_core(v)
    assert diag["G_real_quantization_error"] == pytest.approx(
        relative_error(ref.real, features.real), rel=1e-6)
    assert diag["G_imag_quantization_error"] == pytest.approx(
        relative_error(ref.imag, features.imag), rel=1e-6)
    assert relative_error(torch.ones(3), torch.ones(3)) == 0.0
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 5.0])) == pytest.approx(0.2)


def test_calibration_diagnostics_and_float_outputs():
    model = create_quantized_birman_schwinger(N, "ptq_int8")
    float_core = BirmanSchwingerCore(N)
    model.start_calibration()
    v = _held_out()
    features, diag = model(v, return_diagnostics=True)
    assert torch.equal(features, float_core(v).detach())
    assert diag["calibrating"] and not diag["calibrated"]
    assert diag["v_quantization_error"] is None and diag["G_real_quantization_error"] is None


def test_model_size_shrinks_only_after_apply_ptq():
    sizes = {}
    for mode in ("ptq_int8", "ptq_int4"):
        model = _calibrated(mode, n_batches=2)
        before = model.estimate_model_size()
        assert before["compression_ratio"] < 1.0 and not before["ptq_applied"]
        model.apply_ptq()
        sizes[mode] = model.estimate_model_size()
        assert sizes[mode]["fp32_bytes"] == before["fp32_bytes"]
        assert sizes[mode]["quantized_bytes"] < before["fp32_bytes"]
    assert sizes["ptq_int4"]["compression_ratio"] > sizes["ptq_int8"]["compression_ratio"] > 1


def test_weights_are_frozen_until_enable_qat():
    model = _calibrated("qat_int8", n_batches=2)
    assert not any(p.requires_grad for p in model.parameters())
    model.enable_qat()
    assert all(p.requires_grad for p in model.net.parameters())


def test_wrong_order_is_refused():
    fresh = create_quantized_birman_schwinger(N, "ptq_int8")
    v = _held_out()
    with pytest.raises(StateError, match="not calibrated"):
        fresh(v)
    with pytest.raises(StateError, match="without start_calibration"):
        fresh.end_calibration()
    with pytest.raises(StateError, match="needs calibration first"):
        fresh.apply_ptq()
    fresh.start_calibration()
    with pytest.raises(StateError, match="no potentials were run"):
        fresh.end_calibration()
    with pytest.raises(StateError, match="needs calibration first"):
        fresh.apply_ptq()

    model = _calibrated("ptq_int8", n_batches=2)
    with pytest.raises(ConfigError, match="qat_int8"):
        model.enable_qat()
    model.apply_ptq()
    with pytest.raises(StateError, match="already called"):
        model.apply_ptq()
    with pytest.raises(StateError, match="already converted"):
        model.start_calibration()

    qat = _calibrated("qat_int4", n_batches=2)
    qat.apply_ptq()
    with pytest.raises(StateError, match="cannot be trained"):
        qat.enable_qat()
    with pytest.raises(StateError, match="needs calibrated ranges"):
        create_quantized_birman_schwinger(N, "qat_int8").enable_qat()


def test_qat_in_eval_mode_warns():
    model = _calibrated("qat_int8", n_batches=2)
    model.enable_qat()
    model.eval()
    with pytest.warns(UserWarning, match="eval mode"):
        model(_held_out())
    with torch.no_grad():  # plain evaluation does not warn
        model(_held_out())


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="int8"), "mode"),
    (dict(mode="ptq_int4", n_seq=64), "divisor of n_seq=64"),
    (dict(group_size=0), "group_size"),
    (dict(core="core"), "BirmanSchwingerCore"),
])
def test_configuration_errors(kwargs, match):
    args = dict(n_seq=N) | kwargs
    with pytest.raises(ConfigError, match=match):
        QuantizedBirmanSchwingerCore(**args)


def test_causal_core_stays_causal_after_int4_ptq():
    model = _calibrated("ptq_int4", n_batches=2, causal=True)
    model.apply_ptq()
    v = _held_out()
    changed = v.clone()
    changed[:, 100:] += 5.0
    with torch.no_grad():
        a, b = model(v), model(changed)
    # exact in the reference arithmetic; an int4 kernel dequantizes with a float zero point,
    # so a weight that is 0 may come out as a float rounding residue (relative ~1e-7)
    scale = float(a.abs().max())
    assert float((a[:, :100] - b[:, :100]).abs().max()) <= 1e-6 * scale
    assert float((a[:, 100:] - b[:, 100:]).abs().max()) > 1e-3 * scale
    # the non-causal recipe's per-row ranges would see the later positions
    leaky = _calibrated("ptq_int4", n_batches=2, core=BirmanSchwingerCore(N, causal=True))
    leaky.net = lowbit.prepare(lowbit.to_float(leaky.net), birman_schwinger_recipe("ptq_int4"))
    leaky.start_calibration()
    leaky(v)
    leaky.end_calibration()
    with torch.no_grad():
        leak = float((leaky(v)[:, :100] - leaky(changed)[:, :100]).abs().max())
    assert leak > 1e-3 * scale


def test_quantized_net_saves_and_loads(tmp_path):
    model = _calibrated("ptq_int4", n_batches=2)
    model.apply_ptq()
    lowbit.save(model.net, tmp_path / "core")
    fresh = create_quantized_birman_schwinger(N, "ptq_int4").net
    float_holder = lowbit.to_float(fresh)
    loaded = lowbit.load(tmp_path / "core", float_holder)
    v = _held_out()
    assert isinstance(loaded.core.proj, QuantizedLinear)
    assert isinstance(loaded.core.g_point, QuantComplexPoint)
    with torch.no_grad():
        assert torch.equal(loaded(v), model.net(v))
    assert type(float_holder.core.g_point) in (ComplexPoint, QuantComplexPoint)


def test_readme_example_runs_verbatim():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Birman–Schwinger core and language model\n(.*?)(?=^## )", readme,
                        flags=re.M | re.S)
    assert section, "README has no Birman–Schwinger section"
    code = re.search(r"^```python\n(.*?)^```", section.group(1), flags=re.M | re.S).group(1)
    printed = []
    torch.manual_seed(0)
    exec(code, {"print": lambda *args: printed.append(args)})  # noqa: S102 - our own README
    (mode, bits, calibrated, real_error, imag_error), (size,) = printed
    assert (mode, bits, calibrated) == ("ptq_int4", 4, True)
    assert 0 < real_error < 0.15 and 0 < imag_error < 0.15
    assert size["compression_ratio"] > 1 and size["quantized_bytes"] < size["fp32_bytes"]
