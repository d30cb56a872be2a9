"""Bias correction: removes the measured mean shift on its own calibration data and beats
plain rounding on held-out inputs."""

import pytest
import torch

import lowbit
from lowbit.algorithms import ALGORITHMS, BiasCorrection, fold_batchnorm
from lowbit.algorithms._runner_layers import fake_quant_off, layers_in_call_order
from lowbit.algorithms.bias_correction import output_mean, weight_rounding_shift
from lowbit.errors import ConfigError
from lowbit.model.prepare import lowbit_state

from .test_bn_reconstruct import W4_PER_CHANNEL, held_out_mse
from .toy_cnn import ToyCNN, images


def _prepared(model, calib):
    qmodel, _ = lowbit.quantize_model(model, W4_PER_CHANNEL, calib, convert=False)
    return qmodel


def test_weight_mode_removes_the_measured_shift_of_every_layer():
    """After correction, the shift E[(Ŵ − W) x̂] measured again on the same calibration data
    (each layer's inputs come from the corrected layers before it) is exactly what was taken
    off the bias: the corrected layer's mean output equals the float weights' one."""
    model, calib = ToyCNN(), images(4)
    fold_batchnorm(model)
    qmodel = _prepared(model, calib)
    layers = layers_in_call_order(qmodel, calib[0])
    bias_before = {name: m.bias.detach().clone() for name, m in layers}
    shifts = [weight_rounding_shift(m, qmodel, calib).abs().max() for _, m in layers]
    assert max(shifts) > 1e-3, "int4 rounding must shift some channel"
    state = lowbit_state(qmodel)
    BiasCorrection().apply_quantized(qmodel, calib, state.record)
    for name, layer in layers:
        shift = weight_rounding_shift(layer, qmodel, calib)
        removed = (bias_before[name] - layer.bias.detach()).double()
        assert (shift - removed).abs().max() <= 1e-5 * max(float(shift.abs().max()), 1e-3), name
        assert state.record(name).metrics["bias_correction"] == "weight"


def test_empirical_mode_matches_the_float_mean_of_the_last_layer():
    model, calib = ToyCNN(), images(4)
    fold_batchnorm(model)
    qmodel = _prepared(model, calib)
    head = qmodel.head
    with fake_quant_off(qmodel):
        fp = output_mean(qmodel, head, calib)
    BiasCorrection(mode="empirical").apply_quantized(qmodel, calib, lambda _n: None)
    # every layer before has been corrected too; only the head's own bias moved its mean
    gap = (output_mean(qmodel, head, calib) - fp).abs().max()
    assert gap <= 1e-4 * max(float(fp.abs().max()), 1.0)


def test_beats_plain_rounding_on_held_out_inputs():
    model, calib, held_out = ToyCNN(), images(4), images(4, seed=9)
    plain, _ = lowbit.quantize_model(model, W4_PER_CHANNEL, calib, algorithms=["bn_fold"],
                                     convert=False)
    fixed, _ = lowbit.quantize_model(model, W4_PER_CHANNEL, calib,
                                     algorithms=["bn_fold", "bias_correction"], convert=False)
    assert held_out_mse(model, fixed, held_out) < held_out_mse(model, plain, held_out)


def test_registered_and_checked():
    assert ALGORITHMS["bias_correction"] is BiasCorrection
    assert BiasCorrection.stage == "quantized"
    with pytest.raises(ConfigError, match="BiasCorrection.mode"):
        BiasCorrection(mode="guess")
