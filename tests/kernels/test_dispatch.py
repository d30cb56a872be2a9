"""The dispatcher: one plan per (op, weight, dtype, path), reasons recorded."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import ConfigError, KernelUnavailableError
from lowbit.kernels.dispatch import plan
from lowbit.kernels.registry import PATHS
from lowbit.kernels.weights import quant_weight
from lowbit.types import PerChannel, PerGroup, int4, int8


@pytest.fixture
def w8(qweight):
    torch.manual_seed(0)
    return quant_weight(*qweight(torch.randn(32, 64), int8, PerChannel(0)))


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Every test tunes into its own cache directory."""
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LOWBIT_KERNEL_TUNING", raising=False)


def test_auto_runs_what_measured_fastest_per_row_bucket(fake_timer, w8):
    # the integer kernel wins below 32 rows, the float GEMM from 32 rows up
    fake_timer(lambda name, rows: (1.0 if rows < 32 else 3.0)
               if name.startswith("aten.") else 2.0)
    p = plan("linear.w8", w8, torch.float32)
    assert p.undecided and p.choices == ()
    small, big = p.select(1), p.select(4096)
    assert (small.path, small.impl.name) == ("integer", "aten._weight_int8pack_mm")
    assert small.compute == torch.float32, "a float32 input is never rounded through bfloat16"
    assert small.source == "measured" and small.speedup == pytest.approx(2.0)
    assert big.path == "dense" and big.speedup == pytest.approx(1.0)
    assert p.select(20) is p.select(16), "one decision per bucket"
    assert [(c.min_rows, c.max_rows) for c in p.choices] == [(0, 2), (16, 32), (4096, None)]


def test_a_decision_is_cached_on_disk_and_reused(monkeypatch, fake_timer, w8):
    from lowbit.kernels import tuning
    fake_timer(lambda name, rows: 1.0 if name.startswith("aten.") else 2.0)
    first = plan("linear.w8", w8, torch.float32).select(8)
    assert first.source == "measured"
    assert tuning.cache().path.exists()

    def no_timing(run):
        raise AssertionError("a cached decision is not measured again")
    monkeypatch.setattr(tuning, "time_candidate", no_timing)
    again = plan("linear.w8", w8, torch.float32).select(8)
    assert (again.impl.name, again.compute, again.source) == (first.impl.name, first.compute,
                                                              "cache")
    assert again.speedup == pytest.approx(2.0)


def test_formats_no_integer_kernel_takes_are_not_measured(monkeypatch, qweight):
    from lowbit.kernels import tuning
    monkeypatch.setattr(tuning, "time_candidate", lambda run: pytest.fail("nothing to time"))
    torch.manual_seed(0)
    grouped = quant_weight(*qweight(torch.randn(32, 64), int8, PerGroup(32, 1)))
    first = plan("linear.w8", grouped, torch.float32).select(1)
    assert first.path == "dense" and first.source == "rule"
    assert "one scale per output channel" in first.reason
    assert first.compute == torch.float32, "the float path in the input dtype"


def test_a_bfloat16_input_may_use_bfloat16_kernels(fake_timer, w8):
    fake_timer(lambda name, rows: 1.0 if name.startswith("aten.") else 2.0)
    choice = plan("linear.w8", w8, torch.bfloat16).select(4)
    assert choice.path == "integer" and choice.compute == torch.bfloat16


def test_tuning_off_takes_the_float_path_by_rule(monkeypatch, w8):
    monkeypatch.setenv("LOWBIT_KERNEL_TUNING", "off")
    choice = plan("linear.w8", w8, torch.float32).select(4)
    assert (choice.path, choice.source) == ("dense", "rule") and "tuning is off" in choice.reason


def test_convs_are_not_timed_yet_and_say_so(qweight):
    from lowbit.kernels.conv import prepare_conv2d
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    conv = prepare_conv2d(*qweight(w.reshape(8, -1), int8, PerChannel(0)), (8, 4, 3, 3))
    assert conv.path == "dense" and "no measured choice for conv2d" in conv.reason


def test_forced_paths(w8):
    for path in PATHS:
        (only,) = plan("linear.w8", w8, torch.float32, path).choices
        assert only.path == path and "forced" in only.reason
    (integer,) = plan("linear.w8", w8, torch.float32, "integer").choices
    assert integer.compute in integer.impl.compute_dtypes


def test_forcing_an_unavailable_path_raises(qweight):
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
