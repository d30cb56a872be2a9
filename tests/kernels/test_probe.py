"""Native kernels are probed against the reference once per device before use."""

from __future__ import annotations

import torch

from lowbit.kernels import probe as probe_mod
from lowbit.kernels.probe import probe
from lowbit.kernels.registry import KernelImpl, registered


def test_every_cpu_integer_kernel_has_a_probe_verdict_the_dispatcher_follows(qweight):
    """Whether a kernel passes depends on this machine's CPU and oneDNN; what must hold
    everywhere is that each one is probed and a failure keeps it out of every plan."""
    from lowbit.kernels.dispatch import unusable
    from lowbit.kernels.weights import quant_weight
    from lowbit.types import PerChannel, int8
    w = quant_weight(*qweight(torch.randn(32, 256), int8, PerChannel(0)))
    for (op, path, device, _), impl in registered().items():
        if path == "integer" and device == "cpu":
            assert impl.extra.get("probe"), f"{impl.name} ({op}) has no probe"
            verdict = probe(impl, "cpu")
            assert verdict is None or "probe" in verdict, verdict
            if verdict is not None and impl.supports(w, None) is None:
                # an availability reason (e.g. an engine's own exactness check) comes first
                assert unusable(impl, w) == (impl.available(torch.device("cpu")) or verdict)


def _fake(name, run):
    return KernelImpl(name, "linear.w8", "integer", "cpu", lambda w, dt: w, run,
                      extra={"probe": ("int8", None, None)})


def test_a_wrong_kernel_is_caught_and_cached(monkeypatch):
    monkeypatch.setattr(probe_mod, "_cache", {})
    calls = []

    def wrong(st, x, bias, act):
        calls.append(1)
        return torch.zeros(x.shape[0], st.n)

    impl = _fake("test.zeros", wrong)
    assert "disagrees with the reference" in probe(impl, "cpu")
    assert "disagrees" in probe(impl, "cpu") and len(calls) == 1, "probed once per device"


def test_a_crashing_kernel_is_unavailable_with_its_error(monkeypatch):
    monkeypatch.setattr(probe_mod, "_cache", {})

    def boom(st, x, bias, act):
        raise RuntimeError("expected qGroupSize to be 32")

    reason = probe(_fake("test.boom", boom), "cpu")
    assert reason.startswith("its probe failed: RuntimeError: expected qGroupSize")
