"""prepare_linear / PreparedLinear: the dispatched result against the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.errors import ConfigError, InputError, KernelUnavailableError
from lowbit.kernels.linear import prepare_linear
from lowbit.records import LayerRecord
from lowbit.types import PerChannel, PerGroup, Scheme, int4, int8, uint8

FORMATS = {
    "w8": (int8, PerChannel(0), Scheme.SYMMETRIC, None),
    "w8-affine": (uint8, PerChannel(0), Scheme.AFFINE, None),
    "w8a8": (int8, PerChannel(0), Scheme.SYMMETRIC, "dynamic_int8"),
    "w4-g128": (int4, PerGroup(128, 1), Scheme.SYMMETRIC, None),
}


def _layer(qweight, fmt, path="auto", n=32, k=256):
    qtype, gran, scheme, act = FORMATS[fmt]
    torch.manual_seed(0)
    w, b = torch.randn(n, k), torch.randn(n)
    return w, b, prepare_linear(*qweight(w, qtype, gran, scheme), act=act, path=path)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("path", ["auto", "integer", "dense", "reference"])
def test_every_path_and_row_count_stays_within_the_quantization_error(qweight, relerr, fmt,
                                                                      path,
                                                                      skip_unless_available):
    w, b, lin = skip_unless_available(lambda: _layer(qweight, fmt, path))
    ref_lin = _layer(qweight, fmt, "reference")[2]
    for m in (1, 5, 40):  # on both sides of every table threshold used here
        x = torch.randn(m, 256)
        ref = ref_lin(x, b)
        quant_err = relerr(ref, F.linear(x, w, b))
        got = lin(x, b)
        assert relerr(got, ref) <= 1.5 * quant_err, (fmt, path, m, lin.last.describe())


def test_auto_uses_both_sides_of_its_plan(qweight, fake_timer):
    fake_timer(lambda name, rows: (1.0 if rows < 8 else 3.0) if name.startswith("aten.") else 2.0)
    _, b, lin = _layer(qweight, "w4-g128")
    lin(torch.randn(2, 3, 256), b)  # 6 rows
    assert lin.last.path == "integer"
    lin(torch.randn(9, 256), b)
    assert lin.last.path == "dense"
    assert lin.path == "integer+dense"
    assert "rows 4-7" in lin.kernel and "rows 8-15" in lin.kernel
    assert "measured on first use" in lin.kernel, "the buckets not used yet say so"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes_and_output_dtype_follow_the_input(qweight, dtype):
    _, b, lin = _layer(qweight, "w8")
    x = torch.randn(2, 3, 256, dtype=dtype)
    y = lin(x, b)
    assert y.shape == (2, 3, 32) and y.dtype == dtype
    assert lin(torch.randn(0, 256), b).shape == (0, 32), "no rows, no work"
    assert lin(x[..., ::2].repeat_interleave(2, -1)).shape == (2, 3, 32), "non-contiguous input"


def test_the_record_fields_say_what_ran_and_why(qweight):
    _, _, lin = _layer(qweight, "w4-g128")
    record = LayerRecord("fc", "Linear", "quantized", **lin.record_fields())
    assert (record.kernel_path, record.kernel, record.kernel_reason) == (lin.path, lin.kernel,
                                                                     lin.reason)
    assert record.kernel and record.kernel_reason and record.kernel_path
    _, b, odd = _layer(qweight, "w4-g128", n=24)  # N % 16: the int4 kernel cannot run
    odd(torch.randn(3, 256), b)
    assert odd.path == "dense" and "N a multiple of 16" in odd.reason


def test_memory_reports_stored_and_built_bytes(qweight):
    _, b, lin = _layer(qweight, "w4-g128", path="dense", n=256, k=1024)
    mem = lin.memory()
    assert mem == {"stored": 256 * 512 + 2 * 256 * 8 * 4, "extra": 0}, "dense is built lazily"
    assert mem["stored"] <= 0.16 * 256 * 1024 * 4, "int4-g128 with scales <= 0.16x float32"
    lin(torch.randn(2, 1024), b)
    assert lin.memory()["extra"] == 256 * 1024 * 4, "the float32 dense weight, once built"


def test_forcing_an_unavailable_backend_raises(qweight):
    with pytest.raises(KernelUnavailableError, match=r"path='integer' is unavailable"):
        _layer(qweight, "w4-g128", path="integer", n=24)


def test_bad_inputs_are_named(qweight):
    _, b, lin = _layer(qweight, "w8")
    with pytest.raises(InputError, match=r"K=256 inputs .* pass \[\.\.\., 256\]"):
        lin(torch.randn(3, 255))
    with pytest.raises(InputError, match=r"x must be a float tensor; got torch.int64"):
        lin(torch.ones(3, 256, dtype=torch.long))
    with pytest.raises(InputError, match=r"x is on meta but the weight is on cpu"):
        lin(torch.randn(3, 256, device="meta"))
    with pytest.raises(InputError, match=r"bias has shape \(31,\)"):
        lin(torch.randn(3, 256), b[:31])


def test_bad_arguments_are_named(qweight):
    args = qweight(torch.randn(8, 64), int8, PerChannel(0))
    with pytest.raises(ConfigError, match=r"act='per_token'.*'dynamic_int8'"):
        prepare_linear(*args, act="per_token")
    with pytest.raises(ConfigError, match=r"act_impl='jit'"):
        prepare_linear(*args, act_impl="jit")
    with pytest.raises(ConfigError, match=r"path='int8'.*'auto'"):
        prepare_linear(*args, path="int8")


def test_keep_dense_false_holds_no_float_weight(qweight, relerr):
    _, b, lin = _layer(qweight, "w8", path="dense")
    args = qweight(torch.randn(8, 64), int8, PerChannel(0))
    lean = prepare_linear(*args, path="dense", keep_dense=False)
    kept = prepare_linear(*args, path="dense")
    x = torch.randn(3, 64)
    assert torch.equal(lean(x), kept(x)), "same arithmetic, only the caching differs"
    assert lean.memory()["extra"] == 0 and kept.memory()["extra"] == 8 * 64 * 4
    with pytest.raises(ConfigError, match=r"keep_dense='no'"):
        prepare_linear(*args, keep_dense="no")


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("path", ["auto", "integer", "dense"])
def test_bfloat16_inputs_stay_within_the_stated_bfloat16_bound(qweight, relerr, fmt, path,
                                                                skip_unless_available):
    """A bfloat16 input may compute in bfloat16: the output moves from the float32 reference
    on the same input by at most 3·2⁻⁹ relative (docs/kernels.md)."""
    w, b, lin = skip_unless_available(lambda: _layer(qweight, fmt, path))
    ref_lin = _layer(qweight, fmt, "reference")[2]
    for m in (1, 5, 40):
        x = torch.randn(m, 256).bfloat16()
        ref = ref_lin(x.float(), b)
        got = lin(x, b)
        assert got.dtype == torch.bfloat16
        assert relerr(got.float(), ref) <= 3 * 2 ** -9, (fmt, path, m, lin.last.describe())


def test_a_traced_plan_never_takes_a_kernel_the_compiler_cannot_trace(qweight, fake_timer):
    from lowbit.kernels.registry import registered, traceable
    fake_timer(lambda name, rows: 1.0 if name.startswith(("fbgemm", "onednn")) else
               2.0 if name == "aten._int_mm" else 3.0)
    _, b, lin = _layer(qweight, "w8a8")
    lin(torch.randn(5, 256), b)
    if traceable(lin.last.impl):
        pytest.skip("no x86 engine kernel runs here (the probe or its formats refused it)")
    by_name = {k[3]: impl for k, impl in registered().items() if k[0] == "linear.w8a8"}
    names = [r[4] for r in lin.traceable().ranges]
    assert names and all(traceable(by_name[n]) for n in names), names
