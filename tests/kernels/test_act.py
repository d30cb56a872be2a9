"""Dynamic int8 activation quantization: bit-exact to lowbit's primitives."""

from __future__ import annotations

import os

import pytest
import torch

from lowbit.errors import ConfigError, InputError
from lowbit.kernels import act as act_mod
from lowbit.kernels.act import ActQuantizer, quantize_act
from lowbit.primitives.affine import choose_qparams, fake_quantize, quantize
from lowbit.types import PerTensor, PerToken, Scheme, int8


def _rows() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(7, 96) * 3
    x[1] = 0.0                       # all-zero row: scale floor, zero point -128
    x[2] = -x[2].abs()               # negative-only row: zero point 127
    x[3] = x[3].abs() + 1            # positive-only row
    x[4, :4] = torch.tensor([-1.0, 1.0, 0.5, -0.5])  # ties at ±127.5 codes -> half to even
    x[4, 4:] = 0.25
    return x


@pytest.mark.parametrize("mode, gran", [("dynamic_int8", PerToken()),
                                        ("dynamic_int8_tensor", PerTensor())])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_codes_and_qparams_equal_the_primitives_bit_for_bit(mode, gran, dtype):
    x = _rows().to(dtype)
    q, scale, zero = quantize_act(x, mode)
    qp = choose_qparams(x, int8, Scheme.AFFINE, gran)
    assert torch.equal(q, quantize(x, qp)), "codes differ from lowbit.primitives.quantize"
    assert torch.equal(scale, qp.scale) and torch.equal(zero.to(torch.int32), qp.zero_point)
    fake = ActQuantizer(mode).fake(x)
    assert torch.equal(fake, fake_quantize(x.float(), qp)), "(q − z)·s differs from fake_quantize"
    assert torch.equal(ActQuantizer(mode).reference(x), fake), "the twin is the primitives"


def test_fixed_tensor_qparams_quantize_any_cut_of_the_tensor_identically():
    x = _rows()
    aq = ActQuantizer.for_tensor(x)
    q_all, _, _ = quantize_act(x, "dynamic_int8_tensor")
    q_part, _, _ = aq.quantize(x[2:5, 10:40].reshape(-1, 15))
    assert torch.equal(q_part, q_all[2:5, 10:40].reshape(-1, 15)), \
        "patches cut from a tensor must get the codes of the tensor"
    zero_rows, _, zero = aq.quantize(torch.zeros(2, 3))
    assert torch.equal(zero_rows.float(), zero.expand(2, 3)), "0.0 (padding) is code z exactly"


def test_nan_input_is_refused():
    x = _rows()
    x[3, 5] = float("nan")
    with pytest.raises(InputError, match=r"NaN/Inf"):
        quantize_act(x)


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match=r"act='int8'.*'dynamic_int8'"):
        quantize_act(_rows(), "int8")
    with pytest.raises(ConfigError, match=r"act_impl='jit'.*'eager'"):
        quantize_act(_rows(), impl="jit")
    with pytest.raises(InputError, match=r"pass rows \[M, K\]"):
        quantize_act(torch.zeros(2, 3, 4))


def test_a_failing_compile_falls_back_to_eager(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(act_mod, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level("WARNING", logger="lowbit.kernels.act"):
        got = quantize_act(_rows(), impl="compile")
    want = quantize_act(_rows())
    assert all(torch.equal(a, b) for a, b in zip(got, want)), "the eager result, not garbage"
    assert "torch.compile of the activation quantizer failed" in caplog.text


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LOWBIT_TEST_COMPILE"),
                    reason="compiling takes ~40 s on 2 cores; set LOWBIT_TEST_COMPILE=1")
def test_compiled_quantizer_is_bit_exact():
    x = _rows()
    for mode in ("dynamic_int8", "dynamic_int8_tensor"):
        got = quantize_act(x, mode, impl="compile")
        want = quantize_act(x, mode)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), mode


@pytest.mark.parametrize("mode", ["dynamic_int8", "dynamic_int8_tensor"])
def test_centered_codes_are_the_codes_minus_their_zero_point(mode):
    x = _rows()
    q, scale, zero = quantize_act(x, mode)
    centered, scale_c, zero_c = act_mod.centered_act(x, mode)
    assert torch.equal(centered, q.float() - zero), "clamp(round(x/s), qmin−z, qmax−z) = q − z"
    assert torch.equal(scale_c, scale) and torch.equal(zero_c, zero)
    fixed = ActQuantizer.for_tensor(x)
    assert torch.equal(fixed.centered(x)[0], act_mod.centered_act(x, "dynamic_int8_tensor")[0])
