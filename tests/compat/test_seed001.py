"""Seed 001's helpers: its example (small), the affine primitives and PyTorch as oracles."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.errors import ConfigError, InputError
from lowbit.primitives import affine, metrics
from lowbit.compat.seed001 import (calculate_quantization_error, dequantize,
                                      quantize_symmetric, quantize_weight_per_channel)
from lowbit.types import PerChannel, PerGroup, QType, Scheme, int8

SEED_KEYS = {"max_abs_error", "mean_abs_error", "relative_error_pct", "snr_db"}


def _weight(rows=64, cols=64, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g).to(dtype)


def test_seed_quick_start_on_a_small_weight():
    """The seed's quick start (4096x4096 fp16 there, 64x64 here)."""
    weight = _weight()
    weight_int8, scale = quantize_symmetric(weight)
    assert weight_int8.dtype == torch.int8 and weight_int8.shape == weight.shape
    assert scale.shape == (), "per tensor: scale.shape == ()"
    errors = calculate_quantization_error(weight, weight_int8, scale)
    assert set(errors) == SEED_KEYS and all(isinstance(v, float) for v in errors.values())
    # max-abs scaling clips nothing, so no error exceeds half a step
    assert errors["max_abs_error"] <= float(scale) / 2 * (1 + 1e-6)
    assert 0 < errors["mean_abs_error"] < errors["max_abs_error"]
    assert errors["snr_db"] > 30, "8-bit on a Gaussian: about 40 dB"
    weight_int8, scales = quantize_weight_per_channel(weight)
    assert scales.shape == (64,), "per channel: scales.shape == (out_features,)"


# PyTorch deprecates its quantized tensors but its quantize kernel is still the oracle (DESIGN.md)
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_quantize_symmetric_equals_the_affine_primitives_and_pytorch():
    weight = _weight(dtype=torch.float32)
    q, scale = quantize_symmetric(weight)
    qp = affine.choose_qparams(weight, int8, Scheme.SYMMETRIC)
    assert torch.equal(q, affine.quantize(weight, qp))
    assert torch.equal(scale, weight.abs().max() / 127), "scale = max|x| / 127, exactly"
    oracle = torch.quantize_per_tensor(weight, float(scale), 0, torch.qint8).int_repr()
    assert torch.equal(q, oracle), "PyTorch's quantize kernel is the oracle"


def test_dequantize_is_the_seeds_formula():
    weight = _weight()
    q, scale = quantize_symmetric(weight)
    assert torch.equal(dequantize(q, scale), q.float() * scale), "x̂ = q.float() * scale"
    q, scales = quantize_weight_per_channel(weight)
    assert torch.equal(dequantize(q, scales), q.float() * scales[:, None])
    assert dequantize(q, scales, dtype=torch.float16).dtype == torch.float16


def test_per_channel_matches_the_affine_primitives_along_any_axis():
    weight = _weight(6, 10, torch.float32)
    for axis in (0, 1, -1):
        q, scales = quantize_weight_per_channel(weight, bits=4, axis=axis)
        qp = affine.choose_qparams(weight, QType(4), Scheme.SYMMETRIC, PerChannel(axis))
        assert torch.equal(q, affine.quantize(weight, qp))
        assert torch.equal(scales, qp.scale.reshape(-1)) and scales.shape == (weight.shape[axis],)
        assert torch.equal(dequantize(q, scales, axis=axis), affine.dequantize(q, qp))


def test_per_channel_beats_per_tensor_when_rows_differ_in_scale():
    # rows spanning three decades: one per-tensor scale wastes the grid on the small rows
    weight = _weight(16, 32, torch.float32) * torch.logspace(-2, 1, 16)[:, None]
    q_t, s_t = quantize_symmetric(weight)
    q_c, s_c = quantize_weight_per_channel(weight)
    snr_tensor = calculate_quantization_error(weight, q_t, s_t)["snr_db"]
    snr_channel = calculate_quantization_error(weight, q_c, s_c)["snr_db"]
    assert snr_channel > snr_tensor + 3, (snr_tensor, snr_channel)


@pytest.mark.parametrize("bits,dtype", [(2, torch.int8), (4, torch.int8), (8, torch.int8),
                                        (9, torch.int16), (12, torch.int16), (16, torch.int16)])
def test_bit_widths_use_the_right_grid_and_storage(bits, dtype):
    weight = _weight(8, 8, torch.float32)
    qmax = (1 << (bits - 1)) - 1
    for q, scale in (quantize_symmetric(weight, bits), quantize_weight_per_channel(weight, bits)):
        assert q.dtype == dtype
        assert int(q.min()) >= -qmax - 1 and int(q.max()) <= qmax
        assert int(q.abs().max()) == qmax, "the largest |x| lands on qmax"
    q, scale = quantize_symmetric(weight, bits)
    assert torch.equal(scale, weight.abs().max() / qmax)


def test_exact_values_give_zero_error_and_infinite_snr():
    weight = torch.arange(-127, 128, dtype=torch.float32) * 0.5  # scale 0.5 represents all
    q, scale = quantize_symmetric(weight)
    assert float(scale) == 0.5
    errors = calculate_quantization_error(weight, q, scale)
    assert errors == {"max_abs_error": 0.0, "mean_abs_error": 0.0, "relative_error_pct": 0.0,
                      "snr_db": math.inf}


def test_error_report_equals_the_metrics_module():
    weight = _weight(8, 16, torch.float32, seed=4)
    q, scales = quantize_weight_per_channel(weight, bits=4)
    restored = q.float() * scales[:, None]
    errors = calculate_quantization_error(weight, q, scales)
    assert errors["max_abs_error"] == metrics.max_abs_error(weight, restored)
    assert errors["mean_abs_error"] == metrics.mean_abs_error(weight, restored)
    assert errors["relative_error_pct"] == metrics.relative_error_pct(weight, restored)
    assert errors["snr_db"] == metrics.sqnr_db(weight, restored)


def test_dequantize_accepts_qparams_and_zero_points():
    x = _weight(4, 8, torch.float32)
    qp = affine.choose_qparams(x, QType(4, signed=False), Scheme.AFFINE, PerGroup(4, -1))
    q = affine.quantize(x, qp)
    assert torch.equal(dequantize(q, qp), affine.dequantize(q, qp))
    codes = torch.tensor([[0, 5, 255], [10, 20, 30]], dtype=torch.uint8)
    scales, zeros = torch.tensor([0.5, 2.0]), torch.tensor([3, 10])
    expected = (codes.float() - zeros[:, None].float()) * scales[:, None]
    assert torch.equal(dequantize(codes, scales, zeros), expected)
    assert torch.equal(dequantize(codes, 0.25, 1), (codes.float() - 1) * 0.25)


def test_scalar_input_quantizes_to_a_scalar():
    q, scale = quantize_symmetric(torch.tensor(-3.0))
    assert q.shape == () and int(q) == -127 and float(scale) == pytest.approx(3 / 127)
    assert float(dequantize(q, scale)) == pytest.approx(-3.0)


@pytest.mark.parametrize("bad", [1, 17, 0, 8.0, True, "8", None])
def test_bad_bits_raise(bad):
    x = torch.zeros(2, 2)
    with pytest.raises(ConfigError, match=r"bits=.* is invalid: allowed an integer in \[2, 16\]"):
        quantize_symmetric(x, bits=bad)
    with pytest.raises(ConfigError, match=r"bits=.* is invalid: allowed an integer in \[2, 16\]"):
        quantize_weight_per_channel(x, bits=bad)


def test_bad_inputs_raise():
    with pytest.raises(InputError, match="tensor must be a floating-point torch.Tensor"):
        quantize_symmetric(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(InputError, match="weight must be a floating-point torch.Tensor, got list"):
        quantize_weight_per_channel([1.0, 2.0])
    with pytest.raises(InputError, match="weight is 0-d"):
        quantize_weight_per_channel(torch.tensor(1.0))
    with pytest.raises(InputError, match="axis=2 is out of range"):
        quantize_weight_per_channel(torch.zeros(2, 2), axis=2)
    with pytest.raises(InputError, match="NaN/Inf"):
        quantize_symmetric(torch.tensor([1.0, float("nan")]))
    with pytest.raises(InputError, match="original must be a floating-point"):
        calculate_quantization_error(torch.zeros(2, dtype=torch.int8),
                                     torch.zeros(2, dtype=torch.int8), 1.0)


def test_bad_dequantize_arguments_raise():
    q = torch.zeros(4, 6, dtype=torch.int8)
    with pytest.raises(InputError, match="q must be a tensor of integer codes, got torch.float32"):
        dequantize(q.float(), 1.0)
    with pytest.raises(InputError, match=r"scale of shape \(3,\) fits neither per tensor"):
        dequantize(q, torch.ones(3))
    with pytest.raises(InputError, match=r"scale of shape \(4, 1\) fits neither"):
        dequantize(q, torch.ones(4, 1))
    with pytest.raises(ConfigError, match=r"axis=5 is invalid: allowed an integer in \[-2, 1\]"):
        dequantize(q, torch.ones(4), axis=5)
    with pytest.raises(InputError, match="zero_point has 2 values but scale has 4"):
        dequantize(q, torch.ones(4), torch.zeros(2, dtype=torch.int32))
    with pytest.raises(InputError, match="zero_point holds non-integer values"):
        dequantize(q, 1.0, 0.5)
    with pytest.raises(ConfigError,
                       match="zero_point=torch.float16 is invalid.*dtype=torch.float16"):
        dequantize(q, 1.0, torch.float16)
    qp = affine.choose_qparams(torch.randn(4, 6), int8)
    with pytest.raises(ConfigError, match="zero_point=0 is invalid: allowed None when a QParams"):
        dequantize(q, qp, 0)


def test_quantize_symmetric_on_an_empty_tensor_says_empty_not_block_size():
    with pytest.raises(InputError, match=r"is empty \(shape \(0, 4\)\).*Fix: pass a non-empty"):
        quantize_symmetric(torch.zeros(0, 4))


def test_the_seed_dequantize_refuses_a_negative_or_nan_scale():
    q = torch.tensor([1, -2, 3], dtype=torch.int8)
    for bad in (-0.5, float("nan")):
        with pytest.raises(InputError, match="not finite and > 0"):
            dequantize(q, bad)
