"""The registry: ops by format, one slow twin per op, registration by entry."""

from __future__ import annotations

import pytest
import torch

from lowbit.kernels import registry
from lowbit.kernels.registry import OP_CLASSES, KernelImpl, find, linear_op, register
from lowbit.kernels.weights import quant_weight
from lowbit.types import PerChannel, PerGroup, int2, int4, int8, int16, uint4, uint8


@pytest.mark.parametrize("qtype, act, op", [
    (int2, None, "linear.w4"), (int4, None, "linear.w4"), (uint4, None, "linear.w4"),
    (int8, None, "linear.w8"), (uint8, None, "linear.w8"), (int16, None, "linear.w16"),
    (int4, "dynamic_int8", "linear.w8a8"), (int8, "dynamic_int8_tensor", "linear.w8a8"),
    (int16, "dynamic_int8", "linear.w16a8")])
def test_op_follows_the_weight_grid_and_the_activations(qweight, qtype, act, op):
    torch.manual_seed(0)
    w = quant_weight(*qweight(torch.randn(4, 64), qtype, PerChannel(0)))
    assert linear_op(w, act) == op


def test_every_op_has_its_slow_twin_and_a_dense_path():
    for op, _, _ in OP_CLASSES:
        ref = find(op, "reference", "cpu")
        assert ref is not None and ref.device == "any", f"{op} has no reference"
        assert find(op, "dense", torch.device("cuda")) is not None, f"{op} has no dense path"
    integers = [key for key in registry.registered() if key[1] == "integer"]
    assert {key[0] for key in integers} >= {"linear.w8a8", "linear.w8", "linear.w4"}
    for op, _, device, _ in integers:
        twin = find(op, "reference", "cpu" if device == "any" else device)
        assert twin is not None, f"integer {op} lacks a reference twin"


def test_find_prefers_the_device_entry_and_register_adds_one(monkeypatch, qweight):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert find("linear.w8", "integer", "cpu").name == "aten._weight_int8pack_mm"
    assert find("linear.w16", "integer", "cpu") is None, "no integer kernel for 16-bit weights"
    impl = KernelImpl("mine", "linear.w16", "integer", "cpu", lambda w, dt: w,
                      lambda st, x, b, a: x)
    register(impl)
    assert find("linear.w16", "integer", torch.device("cpu")) is impl
    assert find("linear.w16", "integer", "cuda") is None, "registered for cpu only"
    w = quant_weight(*qweight(torch.randn(4, 64), int16, PerGroup(32, 1)))
    assert linear_op(w, None) == "linear.w16"
