"""W8A8 on the x86 quantized engines (fbgemm, oneDNN qlinear) against exact integer sums.

Whether an engine runs here, and whether its one-pass ``zp128`` feed sums exactly, is the
library's finding on this machine (``available`` and the probe); these tests skip with that
reason where a kernel cannot run, and check the property that must hold everywhere: every
kernel that runs gives lowbit's W8A8 numerics, and none is silently wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lowbit.kernels import int8_engines, prepare_linear, registry
from lowbit.kernels.act import ActQuantizer
from lowbit.kernels.dispatch import unusable
from lowbit.kernels.formats import ActFormat
from lowbit.kernels.int8 import int8_codes
from lowbit.kernels.int8_engines import (ENGINES, FEEDS, engine_exactness, kernel_name,
                                         prepare_engine, run_engine)
from lowbit.kernels.registry import find
from lowbit.kernels.weights import quant_weight
from lowbit.types import PerChannel, PerGroup, Scheme, int4, int8, uint8

NAMES = [kernel_name(e, f) for e in ENGINES for f in FEEDS]
SRC = Path(__file__).resolve().parents[2] / "src"


def _impl(name):
    impl = find("linear.w8a8", "integer", "cpu", name)
    assert impl is not None, f"{name} is not registered"
    return impl


def _require(name, weight, act="dynamic_int8"):
    """The kernel, or a skip naming why the library finds it cannot run here."""
    impl = _impl(name)
    reason = unusable(impl, weight, ActFormat.from_mode(act))
    if reason is not None:
        pytest.skip(f"{name} is unavailable on this machine: {reason}")
    return impl


def exact_w8a8(weight, x, bias, act):
    """lowbit's W8A8 in float64 from int64 sums: ``sx ⊗ sw · Σ (q − zx)(w − zw) + bias``."""
    q, sx, zx = act.quantize(x)
    codes, zw = int8_codes(weight)
    acc = (q.long() - zx.long()) @ (codes.long() - zw.long()[:, None]).t()
    y = acc.double() * sx.double() * weight.scale.reshape(-1).double()
    return y if bias is None else y + bias.double()


def _rel(a, b):
    return float((a.double() - b).norm() / b.norm())


def _weight(qweight, qtype, scheme, n=48, k=128, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(n, k)
    return w, quant_weight(*qweight(w, qtype, PerChannel(0), scheme))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("qtype, scheme", [(int8, Scheme.SYMMETRIC), (uint8, Scheme.AFFINE),
                                           (int4, Scheme.AFFINE)])
@pytest.mark.parametrize("mode", ["dynamic_int8", "dynamic_int8_tensor"])
@pytest.mark.parametrize("m", [1, 33])
def test_engine_kernels_give_lowbits_w8a8_numerics(qweight, relerr, name, qtype, scheme, mode,
                                                   m):
    w, qw = _weight(qweight, qtype, scheme)
    impl = _require(name, qw, mode)
    torch.manual_seed(m)
    x, bias = torch.randn(m, 128), torch.randn(48)
    x[0] = x[0].abs()  # a row with zero point −128 (the largest zero-point correction)
    act = ActQuantizer(mode)
    state = impl.prepare(qw, torch.float32)
    for b in (bias, None):
        got = impl.run(state, x, b, act)
        assert got.dtype == torch.float32 and got.shape == (m, 48)
        # exact integer sums: only the float32 epilogue rounds
        assert _rel(got, exact_w8a8(qw, x, b, act)) <= 1e-6
    ref = find("linear.w8a8", "reference", "cpu").run(qw, x, bias, act)
    assert relerr(impl.run(state, x, bias, act), ref) <= 1.5 * relerr(ref, F.linear(x, w, bias))


@pytest.mark.parametrize("engine", list(ENGINES))
def test_split7_engine_sums_are_bit_exact_integers(engine):
    """Rows in [0, 127] and {0, 1} against full-range int8 weights (unit scales): the engine's
    float32 output equals the int64 sums exactly, saturating pairs included."""
    if ENGINES[engine].missing():
        pytest.skip(f"{engine}: {ENGINES[engine].missing()}")
    gen = torch.Generator().manual_seed(3)
    w = torch.randint(-128, 128, (24, 512), generator=gen, dtype=torch.int8)
    w[0], w[1] = 127, -128
    packed = ENGINES[engine].pack(w, torch.ones(24))
    for m in (1, 8, 40):
        a = torch.randint(0, 128, (m, 512), generator=gen, dtype=torch.uint8)
        a[0] = 127
        got = ENGINES[engine].matmul(packed, torch.ones(24), a)
        assert torch.equal(got.double(), (a.long() @ w.long().t()).double())


@pytest.mark.parametrize("name", NAMES)
def test_saturating_codes_are_exact_or_the_kernel_is_unavailable(qweight, name):
    """Codes 127 (fed as u = 255) against weights ±127 at K=4096: every pair of products
    overflows int16 in ``vpmaddubsw``.  A kernel that runs here must still be exact."""
    k = 4096
    torch.manual_seed(0)
    x = torch.where(torch.rand(3, k) < 0.9, 1.0, -1.0)
    x[0] = 1.0  # all codes 127, zero point −128
    wf = torch.ones(16, k)
    wf[1::2] = -1.0
    qw = quant_weight(*qweight(wf, int8, PerChannel(0)))
    impl = _require(name, qw)
    act = ActQuantizer()
    got = impl.run(impl.prepare(qw, torch.float32), x, None, act)
    exact = exact_w8a8(qw, x, None, act)
    assert float((got.double() - exact).abs().max() / exact.abs().max()) < 1e-6


def test_the_saturation_check_catches_an_engine_that_sums_pairs_in_int16(monkeypatch):
    """An engine emulating ``vpmaddubsw`` (pairs of u8×s8 products saturated to int16) is
    found inexact; the same engine with 32-bit sums passes.  Independent of this CPU."""

    def emulated(saturate):
        def matmul_signed(packed, sw, q):
            u = q.long() + 128
            prod = u[:, None, :] * packed.long()[None, :, :]  # [M, N, K]
            pairs = prod[..., 0::2] + prod[..., 1::2]
            if saturate:
                pairs = pairs.clamp(-32768, 32767)
            return (pairs.sum(-1) - 128 * packed.long().sum(1)).float() * sw
        return int8_engines.Engine("emulated", lambda: None, lambda codes, sw: codes,
                                   None, matmul_signed)

    assert "int16 pair saturation" in int8_engines._saturation_check(emulated(True))
    assert int8_engines._saturation_check(emulated(False)) is None


def test_zp128_is_offered_only_where_the_engine_sums_exactly():
    for engine in ENGINES:
        verdict = engine_exactness(engine)
        reason = _impl(kernel_name(engine, "zp128")).available(torch.device("cpu"))
        assert reason == verdict
        split = _impl(kernel_name(engine, "split7")).available(torch.device("cpu"))
        assert split == ENGINES[engine].missing(), "split7 needs only the engine"
        if verdict is not None and ENGINES[engine].missing() is None:
            assert "not exact" in verdict and "split7" in verdict


def test_packing_restores_the_global_quantized_engine(qweight):
    if ENGINES["fbgemm"].missing():
        pytest.skip(ENGINES["fbgemm"].missing())
    before = torch.backends.quantized.engine
    _, qw = _weight(qweight, int8, Scheme.SYMMETRIC)
    for feed in FEEDS:
        prepare_engine(qw, "fbgemm", feed)
    engine_exactness("fbgemm")
    assert torch.backends.quantized.engine == before


def test_engine_kernels_refuse_what_they_cannot_compute(qweight):
    impl = _impl(NAMES[0])
    torch.manual_seed(0)
    grouped = quant_weight(*qweight(torch.randn(8, 64), int8, PerGroup(32, 1)))
    assert "one scale per output channel" in impl.supports(grouped)
    wide = quant_weight(torch.zeros(8, 16392, dtype=torch.int8), torch.ones(8, 1),
                        torch.zeros(8, 1, dtype=torch.int32), int8, (1, 16392))
    assert "overflow" in impl.supports(wide)
    per_token_static = ActFormat(int8, Scheme.AFFINE, per_token=True, static=True)
    assert "integer kernels take int8 activations" in impl.supports(grouped, per_token_static)
    assert "CPUs only" in impl.available(torch.device("meta"))


@pytest.mark.parametrize("name", NAMES)
def test_a_forced_integer_path_on_each_engine_kernel_gives_lowbits_numerics(
        qweight, monkeypatch, skip_unless_available, name):
    """With only ``name`` registered as W8A8's integer kernel, ``path='integer'`` runs it (or
    raises the library's reason, turned into a skip) with lowbit's numerics."""
    only = {key: impl for key, impl in registry.registered().items()
            if key[:3] != ("linear.w8a8", "integer", "cpu") or impl.name == name}
    monkeypatch.setattr(registry, "_REGISTRY", only)
    _, qw = _weight(qweight, int8, Scheme.SYMMETRIC, n=32, k=96)
    args = (qw.qdata, qw.scale, qw.zero_point, qw.qtype, qw.block_size)
    lin = skip_unless_available(lambda: prepare_linear(*args, act="dynamic_int8",
                                                       path="integer"))
    torch.manual_seed(1)
    x, bias = torch.randn(2, 5, 96), torch.randn(32)
    y = lin(x, bias)
    assert lin.last.impl.name == name and lin.last.source == "forced"
    want = exact_w8a8(qw, x.reshape(-1, 96), bias, ActQuantizer()).reshape(2, 5, 32)
    assert _rel(y, want) <= 1e-6


def test_auto_picks_an_engine_kernel_when_it_is_measured_fastest(qweight, fake_timer):
    _, qw = _weight(qweight, int8, Scheme.SYMMETRIC, n=32, k=96)
    runs = [n for n in NAMES if unusable(_impl(n), qw, ActFormat.from_mode("dynamic_int8"))
            is None]
    if not runs:
        pytest.skip("no x86 engine kernel runs on this machine")
    fake_timer(lambda impl, rows: 1e-4 if impl == runs[-1] else 1e-3)
    lin = prepare_linear(qw.qdata, qw.scale, qw.zero_point, qw.qtype, qw.block_size,
                         act="dynamic_int8")
    y = lin(torch.randn(4, 96))
    assert lin.last.impl.name == runs[-1] and lin.last.source == "measured"
    assert y.shape == (4, 32)


def test_under_avx2_isa_caps_the_split7_kernels_stay_exact():
    """A fresh process with fbgemm and oneDNN held to AVX2 (``vpmaddubsw``, int16 pair sums):
    the split7 kernels are exact on saturating codes, and each zp128 kernel is either exact or
    reported unavailable — never silently wrong."""
    code = (
        "import torch\n"
        "from lowbit.kernels.int8_engines import ENGINES, engine_exactness, prepare_engine, "
        "run_engine\n"
        "from lowbit.kernels.act import ActQuantizer\n"
        "from lowbit.kernels.weights import quant_weight\n"
        "k = 512\n"
        "codes = torch.full((8, k), 127, dtype=torch.int8); codes[1::2] = -127\n"
        "qw = quant_weight(codes, torch.ones(8, 1), torch.zeros(8, 1, dtype=torch.int32), "
        "'int8', (1, k))\n"
        "x = torch.ones(3, k); x[1, ::3] = -1.0\n"
        "act = ActQuantizer()\n"
        "q, sx, zx = act.quantize(x)\n"
        "want = ((q.long() - zx.long()) @ codes.long().t()).double() * sx.double()\n"
        "for e in ENGINES:\n"
        "    if ENGINES[e].missing(): print(e, 'missing'); continue\n"
        "    for feed in ('split7', 'zp128'):\n"
        "        if feed == 'zp128' and engine_exactness(e):\n"
        "            print(e, feed, 'unavailable'); continue\n"
        "        got = run_engine(prepare_engine(qw, e, feed), x, None, act).double()\n"
        "        assert torch.allclose(got, want, rtol=1e-6, atol=0), (e, feed)\n"
        "        print(e, feed, 'exact')\n")
    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2",
               ATEN_CPU_CAPABILITY="avx2", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    for e in ENGINES:
        if f"{e} missing" not in lines:
            assert f"{e} split7 exact" in lines, out.stdout
