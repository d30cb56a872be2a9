"""convert: calibrated fake-quant modules become real low-bit modules whose outputs are
bit-identical to the fake-quant model's, for every preset and layer kind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import StateError
from lowbit.model.convert import convert
from lowbit.model.prepare import calibrate, lowbit_state, prepare, quant_modules
from lowbit.nn.qat import QuantLinear
from lowbit.nn.quantized import (QuantizedConv1d, QuantizedConv2d, QuantizedEmbedding,
                                 QuantizedLinear, QuantizedModule, set_kernel_path)
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerChannel, PerTensor, Scheme, int4, int8


class Mixed(nn.Module):
    """Embedding, Conv1d, 1x1/grouped/depthwise Conv2d and Linear layers whose weights split
    into groups of 128 where a grouped preset needs it (K = 128 for conv1d, pw, fc)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 64)
        self.conv1d = nn.Conv1d(64, 32, 2)                 # K = 64*2 = 128
        self.conv = nn.Conv2d(2, 128, 3, padding=1)
        self.pw = nn.Conv2d(128, 32, 1)                    # 1x1, K = 128
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(128, 8)                        # K = 128

    def forward(self, ids, image):
        t = self.conv1d(self.emb(ids).transpose(1, 2)).mean(-1)          # (B, 32)
        x = self.depthwise(F.relu(self.grouped(self.pw(F.relu(self.conv(image))))))
        x = x.mean((2, 3))                                                 # (B, 32)
        return self.fc(torch.cat([t, x, t * x, t - x], dim=1))           # (B, 8)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 16, (2, 6), generator=g), torch.randn(2, 2, 5, 5, generator=g)


@pytest.fixture(scope="module")
def mixed() -> Mixed:
    torch.manual_seed(0)
    return Mixed().eval()


def calibrated(model, recipe, fq_impl="reference"):
    fq = prepare(model, recipe, fq_impl=fq_impl)
    with calibrate(fq):
        for seed in (1, 2):
            fq(*batch(seed))
    return fq


REAL_TYPE = {"emb": QuantizedEmbedding, "conv1d": QuantizedConv1d, "conv": QuantizedConv2d,
             "pw": QuantizedConv2d, "grouped": QuantizedConv2d, "depthwise": QuantizedConv2d,
             "fc": QuantizedLinear}


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-static", "w8a16", "w4a16-g128", "w4a8",
                                    "int16-fixed88", "int16"])
def test_converted_output_is_bit_identical_to_the_fake_quant_model(mixed, preset):
    """The issue allows 1e-5 relative; the maths is the same arithmetic, so equality holds."""
    fq = calibrated(mixed, preset)
    q = convert(fq)
    # kernel path 'auto' (the default) may round through bfloat16 kernels; 'reference' is
    # the exact fake-quant arithmetic this test holds to equality (tests/nn/test_kernel_dispatch.py
    # holds the kernels to their tolerance)
    set_kernel_path(q, "reference")
    converted = {n for n, m in q.named_modules() if isinstance(m, QuantizedModule)}
    assert converted == {n for n, m in quant_modules(fq) if m.weight_quantizer is not None}
    assert converted, f"{preset} converts at least one layer of this model"
    for name in converted:
        assert type(q.get_submodule(name)) is REAL_TYPE[name], name
    for seed in (3, 4):
        with torch.no_grad():
            a, b = fq(*batch(seed)), q(*batch(seed))
        assert torch.equal(a, b), f"{preset}: max diff {(a - b).abs().max().item()}"


def test_int4_group_weights_are_packed_and_int8_weights_are_codes(mixed):
    q = convert(calibrated(mixed, "w4a16-g128"))
    assert q.fc.packed and q.fc.qdata.dtype == torch.uint8
    assert tuple(q.fc.qdata.shape) == (8, 64), "two int4 codes per byte along K = 128"
    assert tuple(q.fc.scale.shape) == (8, 1), "one scale per group of 128"
    q8 = convert(calibrated(mixed, "w8a8-static"))
    assert q8.fc.qdata.dtype == torch.int8 and tuple(q8.fc.qdata.shape) == (8, 128)


def test_convert_copies_by_default_and_inplace_converts_the_model(mixed):
    fq = calibrated(mixed, "w8a8-static")
    q = convert(fq)
    assert q is not fq and type(fq.fc) is QuantLinear, "the fake-quant model is kept"
    assert lowbit_state(q).converted and not lowbit_state(fq).converted
    same = convert(fq, inplace=True)
    assert same is fq and type(fq.fc) is QuantizedLinear


def test_records_get_storage_and_kernel_after_convert(mixed):
    q = convert(calibrated(mixed, "w8a8-static"))
    rec = lowbit_state(q).record("fc")
    assert rec.metrics["weight_bytes"] == q.fc.nbytes()
    # convert copies the module's kernel choice into the record
    assert rec.kernel_path == q.fc.kernel_path and rec.kernel == q.fc.kernel
    assert rec.kernel_reason == q.fc.kernel_reason and rec.kernel_reason


def test_fused_fake_quant_converts_to_the_same_outputs(mixed):
    probe = batch(5)
    for preset in ("w8a8", "w8a8-static"):
        ref = convert(calibrated(mixed, preset))
        nat = convert(calibrated(mixed, preset, fq_impl="fused"))
        with torch.no_grad():
            assert torch.equal(ref(*probe), nat(*probe)), preset


def test_an_uncalibrated_static_model_cannot_be_converted(mixed):
    fq = prepare(mixed, "w8a8-static")
    with pytest.raises(StateError, match="calibrate before converting"):
        convert(fq)
    fq.start_calibration()
    with pytest.raises(StateError, match="observing"):
        convert(fq)


def test_convert_needs_a_prepared_model(mixed):
    with pytest.raises(StateError, match="has not been prepared"):
        convert(mixed)


def test_activation_only_layers_stay_fake_quant_and_say_so():
    torch.manual_seed(0)
    act = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor())
    recipe = Recipe((Rule(ByType(("Linear",)), LayerConfig(weight=None, act=act)),), "act-only")
    fq = prepare(nn.Sequential(nn.Linear(4, 4)), recipe)
    with calibrate(fq):
        fq(torch.randn(3, 4))
    q = convert(fq)
    assert type(q[0]) is QuantLinear
    assert "stays fake-quant after convert" in lowbit_state(q).record("0").reason
    x = torch.randn(2, 4)
    assert torch.equal(q(x), fq(x))


def test_a_trained_lsq_model_converts_to_the_same_outputs():
    """Learnable (LSQ) scales after a few training steps: convert holds the learned grid."""
    torch.manual_seed(0)
    w = QuantSpec(qtype=int4, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0), learnable=True)
    a = QuantSpec(qtype=int4, scheme=Scheme.AFFINE, granularity=PerTensor(), learnable=True)
    recipe = Recipe((Rule(ByType(("Linear",)), LayerConfig(w, a)),), "w4a4-lsq")
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fq = prepare(model, recipe)
    x = torch.randn(32, 8)
    with calibrate(fq):
        fq(x)
    before = fq[0].weight_quantizer.scale.detach().clone()
    opt = torch.optim.SGD(fq.parameters(), lr=0.05)
    for _ in range(3):
        loss = fq(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(fq[0].weight_quantizer.scale.detach(), before), "scales trained"
    q = convert(fq)
    with torch.no_grad():
        assert torch.equal(fq(x), q(x))


def test_a_layer_shared_under_two_names_converts_once():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    torch.manual_seed(0)
    fq = prepare(Shared(), "w8a8-static")
    with calibrate(fq):
        fq(torch.randn(3, 4))
    q = convert(fq)
    assert type(q.a) is QuantizedLinear and q.a is q.b, "no name may keep the QAT module"
    x = torch.randn(2, 4)
    assert torch.equal(q(x), fq(x))


def test_tune_kernels_decides_ahead_and_records_the_decisions(fake_timer):
    from lowbit.model import tune_kernels
    fake_timer(lambda name, rows: (1.0 if rows <= 8 else 4.0) if name.startswith("aten.") else 2.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    fq = prepare(model, "w8a16")  # weight-only int8: a float32 integer kernel on every CPU
    with calibrate(fq):
        fq(torch.randn(4, 64))
    q = convert(fq)
    before = lowbit_state(q).record("0").kernel
    assert "measured on first use" in before
    tune_kernels(q, rows=(1, 8, 4096))
    record = lowbit_state(q).record("0")
    assert "rows 0-1" in record.kernel and "rows 8-15" in record.kernel
    assert "rows>=4096" in record.kernel and record.kernel_path == "integer+dense"
    assert "(2.00x float)" in record.kernel and "measured now" in record.kernel_reason
