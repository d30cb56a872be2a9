"""Convolutions: 1x1 as matmul, im2col through the integer kernels, the float twins."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.errors import ConfigError, InputError
from lowbit.kernels.act import ActQuantizer
from lowbit.kernels.conv import prepare_conv1d, prepare_conv2d
from lowbit.types import PerChannel, PerGroup, int4, int8

GEOMETRIES = {  # name -> (O, I, kh, kw, stride, padding, dilation, groups)
    "3x3": (32, 16, 3, 3, 1, 1, 1, 1),
    "3x3-s2-d2-g2": (32, 32, 3, 3, 2, 2, 2, 2),
    "1x1": (32, 64, 1, 1, 1, 0, 1, 1),
}


def _conv(qweight, geo, qtype=int8, gran=PerChannel(0), act=None, path="auto"):
    o, i, kh, kw, stride, pad, dil, groups = GEOMETRIES[geo]
    torch.manual_seed(0)
    w, b = torch.randn(o, i // groups, kh, kw), torch.randn(o)
    args = qweight(w.reshape(o, -1), qtype, gran)
    conv = prepare_conv2d(*args, tuple(w.shape), stride=stride, padding=pad, dilation=dil,
                          groups=groups, act=act, path=path)
    return w, b, conv, (stride, pad, dil, groups)


@pytest.mark.parametrize("geo", list(GEOMETRIES))
@pytest.mark.parametrize("act", [None, "dynamic_int8_tensor"])
@pytest.mark.parametrize("path", ["auto", "integer", "dense"])
def test_every_path_stays_within_the_quantization_error(qweight, relerr, geo, act, path,
                                                        skip_unless_available):
    w, b, conv, geometry = skip_unless_available(lambda: _conv(qweight, geo, act=act, path=path))
    ref = _conv(qweight, geo, act=act, path="reference")[2]
    x = torch.randn(2, w.shape[1] * geometry[3], 9, 9)
    want = ref(x, b)
    quant_err = relerr(want, F.conv2d(x, w, b, *geometry))
    got = conv(x, b)
    assert got.shape == want.shape and got.dtype == x.dtype
    assert relerr(got, want) <= 1.5 * quant_err, (geo, act, path, conv.kernel)
    if act and path == "integer":  # int8 codes x int8 weights: exact products and sums,
        assert relerr(got, want) <= 2.0 ** -9  # at most a bfloat16 rounding of the output


def test_reference_is_conv_of_fake_quant_input_and_dequantized_weight(qweight):
    w, b, conv, geometry = _conv(qweight, "3x3", act="dynamic_int8_tensor", path="reference")
    x = torch.randn(2, 16, 9, 9)
    x_hat = ActQuantizer.for_tensor(x).reference(x.reshape(1, -1)).reshape(x.shape)
    w_hat = conv.cw.weight.dequantize().reshape(w.shape)
    assert torch.equal(conv(x, b), F.conv2d(x_hat, w_hat, b, *geometry))


def test_pointwise_conv_runs_as_a_linear_layer(qweight):
    _, _, conv, _ = _conv(qweight, "1x1", qtype=int4, gran=PerGroup(32, 1))
    assert conv.linear is not None and conv.plan is None
    conv(torch.randn(1, 64, 2, 3))
    assert conv.last is conv.linear.last and conv.kernel == conv.linear.kernel
    _, _, general, _ = _conv(qweight, "3x3")
    assert general.linear is None and "conv2d" in general.plan.op


def test_general_conv_integer_is_im2col_and_auto_records_its_choice(qweight):
    _, _, native, _ = _conv(qweight, "3x3-s2-d2-g2", path="integer")
    assert native.kernel.startswith("im2col+integer") and native.path == "integer"
    _, _, auto, _ = _conv(qweight, "3x3")
    assert auto.reason and auto.kernel, "the choice and its reason are recorded"
    assert auto.record_fields() == {"kernel_path": auto.path, "kernel": auto.kernel,
                                    "kernel_reason": auto.reason}


def test_conv1d_is_a_conv2d_of_height_one(qweight, relerr):
    torch.manual_seed(0)
    w, x = torch.randn(16, 8, 3), torch.randn(2, 8, 20)
    conv = prepare_conv1d(*qweight(w.reshape(16, -1), int8, PerChannel(0)), (16, 8, 3),
                          padding=1, stride=2, path="integer")
    ref = prepare_conv1d(*qweight(w.reshape(16, -1), int8, PerChannel(0)), (16, 8, 3),
                         padding=1, stride=2, path="reference")
    assert relerr(conv(x), ref(x)) <= 1.5 * relerr(ref(x), F.conv1d(x, w, padding=1, stride=2))
    with pytest.raises(InputError, match=r"\[N, C, L\]"):
        conv(torch.randn(2, 8))
    with pytest.raises(ConfigError, match=r"weight_shape=\(16, 24\)"):
        prepare_conv1d(*qweight(w.reshape(16, -1), int8, PerChannel(0)), (16, 24))


def test_bad_arguments_are_named(qweight):
    torch.manual_seed(0)
    args = qweight(torch.randn(8, 36), int8, PerChannel(0))
    with pytest.raises(ConfigError, match=r"act='dynamic_int8'.*one scale per tensor"):
        prepare_conv2d(*args, (8, 4, 3, 3), act="dynamic_int8")
    with pytest.raises(InputError, match=r"weight_shape \(8, 3, 3, 3\) flattens to \[8, 27\]"):
        prepare_conv2d(*args, (8, 3, 3, 3))
    with pytest.raises(ConfigError, match=r"weight_shape=\(8, 36\)"):
        prepare_conv2d(*args, (8, 36))
    with pytest.raises(ConfigError, match=r"groups=3 .* dividing O=8"):
        prepare_conv2d(*args, (8, 4, 3, 3), groups=3)
    with pytest.raises(ConfigError, match=r"stride=-1"):
        prepare_conv2d(*args, (8, 4, 3, 3), stride=-1)
    conv = prepare_conv2d(*args, (8, 4, 3, 3), padding="valid")
    with pytest.raises(InputError, match=r"float \[N, 4, H, W\]"):
        conv(torch.randn(1, 5, 6, 6))
    with pytest.raises(InputError, match=r"bias has shape \(7,\)"):
        conv(torch.randn(1, 4, 6, 6), torch.randn(7))
