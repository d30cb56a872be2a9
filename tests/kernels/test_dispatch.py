"""The dispatcher: one plan per (op, weight, dtype, path), reasons recorded."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError, KernelUnavailableError
from lowbit.kernels import dispatch
from lowbit.kernels.dispatch import TABLE, machine, plan
from lowbit.kernels.registry import PATHS, find
from lowbit.kernels.weights import quant_weight
from lowbit.types import PerChannel, PerGroup, int4, int8


@pytest.fixture
def w8(qweight):
    torch.manual_seed(0)
    return quant_weight(*qweight(torch.randn(32, 64), int8, PerChannel(0)))


@pytest.mark.parametrize("flags,expected", [
    ({"_is_amx_tile_supported", "_is_avx512_bf16_supported", "_is_vnni_supported",
      "_is_avx512_supported", "_is_avx2_supported"}, "cpu.amx"),
    ({"_is_vnni_supported", "_is_avx512_supported", "_is_avx2_supported"}, "cpu.avx512_vnni"),
    ({"_is_avx512_supported", "_is_avx2_supported"}, "cpu.avx2"),
    ({"_is_avx2_supported"}, "cpu.avx2"),
    (set(), "cpu"),
])
def test_machine_names_the_most_capable_class_whose_probes_all_pass(monkeypatch, flags,
                                                                     expected):
    for _, probes in dispatch.CPU_CLASSES:
        for name in probes:
            monkeypatch.setattr(torch.cpu, name, lambda name=name: name in flags, raising=False)
    assert machine("cpu") == expected
    assert machine("cuda") == "cuda", "named without initialising CUDA"


def test_table_entries_are_well_formed():
    for key, segments in TABLE.items():
        where, op, *size = key
        assert size in ([], ["small"], ["large"]), key
        bounds = [s[0] for s in segments]
        assert bounds[-1] is None, f"{key}: the last segment must be unbounded"
        assert bounds[:-1] == sorted(bounds[:-1]), f"{key}: bounds ascend"
        for _, path, compute, *kernel in segments:
            device = "cuda" if where == "cuda" else "cpu"
            assert find(op, path, device, *kernel) is not None, (key, path, kernel)
            assert compute == "input" or compute in dispatch._DTYPES, (key, compute)


def test_size_class_rows_win_over_rows_for_every_size(monkeypatch, qweight, w8):
    monkeypatch.setattr(dispatch, "machine", lambda device: "cpu.test")
    monkeypatch.setitem(TABLE, ("cpu.test", "linear.w8"), ((None, "dense", "f32"),))
    monkeypatch.setitem(TABLE, ("cpu.test", "linear.w8", "large"), ((8, "integer", "bf16"),
                                                                    (None, "dense", "f32")))
    monkeypatch.setattr(dispatch, "LARGE_WEIGHT", 32 * 64)
    assert dispatch.size_class(w8) == "large"
    assert plan("linear.w8", w8, torch.float32).select(1).path == "integer"
    small = quant_weight(*qweight(torch.randn(16, 64), int8, PerChannel(0)))
    assert dispatch.size_class(small) == "small"
    assert plan("linear.w8", small, torch.float32).select(1).path == "dense"


def test_the_table_can_name_one_of_several_integer_kernels(monkeypatch, w8):
    monkeypatch.setattr(dispatch, "machine", lambda device: "cpu.test")
    for name in ("aten._int_mm", "aten._weight_int8pack_mm(a8 codes)"):
        monkeypatch.setitem(TABLE, ("cpu.test", "linear.w8a8"),
                            ((None, "integer", "f32", name),))
        assert plan("linear.w8a8", w8, torch.float32).select(1).impl.name == name
        assert plan("linear.w8a8", w8, torch.float32, "integer").select(1).impl.name == name


def test_auto_follows_the_table_per_row_count(monkeypatch, w8):
    monkeypatch.setattr(dispatch, "machine", lambda device: "cpu.test")
    monkeypatch.setitem(TABLE, ("cpu.test", "linear.w8"),
                        ((32, "integer", "bf16"), (None, "dense", "bf16")))
    p = plan("linear.w8", w8, torch.float32)
    assert [(c.min_rows, c.max_rows, c.path, c.compute) for c in p.choices] == [
        (0, 32, "integer", torch.bfloat16), (32, None, "dense", torch.bfloat16)]
    assert p.select(1).path == "integer" and p.select(31).path == "integer"
    assert p.select(32).path == "dense" and p.select(10 ** 6).path == "dense"
    assert "cpu.test table" in p.select(1).reason and not p.select(1).fallback


def test_a_kernel_that_cannot_run_falls_back_and_says_why(monkeypatch, qweight):
    monkeypatch.setattr(dispatch, "machine", lambda device: "cpu.test")
    monkeypatch.setitem(TABLE, ("cpu.test", "linear.w8"), ((16, "integer", "bf16"),
                                                           (None, "dense", "f32")))
    torch.manual_seed(0)
    grouped = quant_weight(*qweight(torch.randn(32, 64), int8, PerGroup(32, 1)))
    first = plan("linear.w8", grouped, torch.float32).select(1)
    assert first.path == "dense" and first.fallback
    assert "unavailable" in first.reason and "one scale per output channel" in first.reason
    assert first.compute == torch.float32, "the fallback is the float path in the input dtype"


def test_no_table_row_means_the_float_path_in_the_input_dtype(monkeypatch, w8):
    monkeypatch.setattr(dispatch, "machine", lambda device: "cpu.unmeasured")
    for dtype in (torch.float32, torch.bfloat16):
        (only,) = plan("linear.w8", w8, dtype).choices
        assert (only.path, only.compute, only.max_rows) == ("dense", dtype, None)
        assert "no table row for cpu.unmeasured/linear.w8" in only.reason


def test_forced_backends(w8):
    for path in PATHS:
        (only,) = plan("linear.w8", w8, torch.float32, path).choices
        assert only.path == path and "forced" in only.reason
    (integer,) = plan("linear.w8", w8, torch.float32, "integer").choices
    assert integer.compute in integer.impl.compute_dtypes


def test_forcing_an_unavailable_backend_raises(qweight):
    torch.manual_seed(0)
    odd = quant_weight(*qweight(torch.randn(8, 64), int4, PerGroup(32, 1)))  # N % 16 != 0
    with pytest.raises(KernelUnavailableError,
                       match=r"path='integer' is unavailable for linear.w4.*N a multiple of 16"):
        plan("linear.w4", odd, torch.float32, "integer")
    with pytest.raises(KernelUnavailableError, match=r"no implementation is registered"):
        plan("linear.w16", odd, torch.float32, "integer")


def test_unknown_path_is_a_config_error(w8):
    with pytest.raises(ConfigError, match=r"kernel_path='fast' is invalid.*'auto'"):
        plan("linear.w8", w8, torch.float32, "fast")
    with pytest.raises(ConfigError, match=r"kernel_path='native'.*old name of 'integer'"):
        plan("linear.w8", w8, torch.float32, "native")


def test_forced_integer_tries_every_kernel_and_names_each_reason(qweight):
    torch.manual_seed(0)
    grouped = quant_weight(*qweight(torch.randn(32, 64), int8, PerGroup(32, 1)))
    with pytest.raises(KernelUnavailableError) as info:
        plan("linear.w8a8", grouped, torch.float32, "integer")
    message = str(info.value)
    assert "aten._int_mm: int8 kernels take one scale per output channel" in message
    assert "aten._weight_int8pack_mm(a8 codes):" in message
