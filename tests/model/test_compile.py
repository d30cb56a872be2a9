"""lowbit.compile: the converted model under torch.compile, kernels frozen, same numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError, InputError
from lowbit.kernels.linear import TracedLinear
from lowbit.model.compile import freeze_kernels


def _model_and_calib():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    return model, [torch.randn(8, 32) for _ in range(4)]


@pytest.fixture(scope="module")
def w8a8():
    model, calib = _model_and_calib()
    qmodel, _ = lowbit.quantize_model(model, "w8a8", calib)
    return model, qmodel


def test_freeze_decides_every_row_count_and_matches_the_eager_kernel(w8a8):
    _, qmodel = w8a8
    frozen = freeze_kernels(qmodel)
    assert set(frozen) == {"0", "2"}
    layer = qmodel[0]
    traced = layer.__dict__["_frozen"][torch.float32]
    assert isinstance(traced, TracedLinear)
    lows = [r[0] for r in traced.ranges]
    assert lows[0] == 0 and lows == sorted(lows) and traced.ranges[-1][1] is None
    for rows in (1, 3, 8, 40):  # every row count runs the kernel its plan chose for it
        x = torch.randn(rows, 32)
        with torch.inference_mode():
            eager = layer(x)
            frozen_y = traced(x, layer.bias)
        torch.testing.assert_close(frozen_y, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_model_has_no_graph_break_and_keeps_the_numbers(w8a8):
    model, qmodel = w8a8
    compiled = lowbit.compile(qmodel, fullgraph=True)  # a graph break would raise
    x = torch.randn(24, 32)
    with torch.inference_mode():
        eager, out, ref = qmodel(x), compiled(x), model(x)
    assert compiled.first_call_s is not None and compiled.first_call_s > 0
    assert compiled.module is qmodel
    # the same operations, reassociated: far closer to eager than eager is to float
    assert (out - eager).abs().max() <= 0.05 * (eager - ref).abs().max()


@pytest.mark.slow
def test_plain_torch_compile_runs_unfrozen_layers_outside_the_graph():
    model, calib = _model_and_calib()
    qmodel, _ = lowbit.quantize_model(model, "w8a16", calib)
    x = torch.randn(5, 32)
    with torch.inference_mode():
        eager = qmodel(x)
        out = torch.compile(qmodel)(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)


def test_bfloat16_model_keeps_float32_qparams_and_computes_in_bfloat16():
    model, calib = _model_and_calib()
    qmodel, _ = lowbit.quantize_model(model, "w8a16", calib)
    x = torch.randn(16, 32)
    with torch.inference_mode():
        y32 = qmodel(x)
        scales = [m.scale.clone() for m in qmodel.modules()
                  if isinstance(m, lowbit.QuantizedLinear)]
        qmodel.to(torch.bfloat16)
        layers = [m for m in qmodel.modules() if isinstance(m, lowbit.QuantizedLinear)]
        assert all(m.scale.dtype == torch.float32 for m in layers)
        assert all(torch.equal(m.scale, s) for m, s in zip(layers, scales))
        assert all(m.weight_dtype == torch.bfloat16 for m in layers)
        assert all(m.kernel_unsupported() is None for m in layers)
        y16 = qmodel(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    # bfloat16 rounding of inputs, weights products and outputs: a few 2^-8 relative
    err = (y16.float() - y32).norm() / y32.norm()
    assert err < 2 ** -6


def test_compile_rejects_bad_arguments(w8a8):
    _, qmodel = w8a8
    with pytest.raises(InputError, match="nn.Module"):
        lowbit.compile("model")
    with pytest.raises(ConfigError, match="dtype"):
        lowbit.compile(qmodel, dtype=torch.int8)
    with pytest.raises(ConfigError, match="options"):
        lowbit.compile(qmodel, options=["freezing"])
    with pytest.raises(ConfigError, match="mode= or options="):
        lowbit.compile(qmodel, mode="max-autotune", options={"freezing": True})
    qmodel.train()
    try:
        with pytest.raises(InputError, match="eval"):
            lowbit.compile(qmodel)
    finally:
        qmodel.eval()
