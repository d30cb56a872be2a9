"""Ragged groups through the model flow: layers whose input width the group size does not
divide are quantized (not skipped), fake-quant and convert agree bit for bit, the weights
equal the naive per-group reference, and a checkpoint round-trips them."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.model.api import quantize_model
from lowbit.model.checkpoint import load, save
from lowbit.model.convert import convert
from lowbit.model.prepare import calibrate, lowbit_state, prepare
from lowbit.nn.quantized import QuantizedModule, set_kernel_path
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerGroup, Scheme, int4

from ..primitives.test_ragged import naive_groups


class Ragged(nn.Module):
    """A 576-wide projection (4 × 128 + 64), a 200-wide one (128 + 72), one narrower than a
    group (64) and a conv whose flattened K is 27."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)            # K = 3·3·3 = 27
        self.proj = nn.Linear(576, 64)
        self.up = nn.Linear(64, 200)
        self.down = nn.Linear(200, 10)

    def forward(self, x, image):
        c = self.conv(image).mean((2, 3))         # (B, 4)
        h = self.up(torch.relu(self.proj(x)))
        return self.down(torch.relu(h)) + c.sum(1, keepdim=True)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 576, generator=g), torch.randn(3, 3, 6, 6, generator=g)


def _quantized(recipe="w4a16-g128"):
    torch.manual_seed(0)
    model = Ragged().eval()
    fq = prepare(model, recipe)
    with calibrate(fq):
        fq(*_batch(1))
    return model, fq


def test_every_layer_is_quantized_at_g128_and_weights_match_the_naive_groups():
    model, fq = _quantized()
    records = {r.name: r for r in lowbit_state(fq).records}
    assert {n: r.action for n, r in records.items()} == dict.fromkeys(
        ["conv", "proj", "up", "down"], "quantized")
    for name in ("proj", "down"):  # int4 affine, groups of 128 along the inputs
        w = getattr(model, name).weight.detach()
        deq = naive_groups(w, int4, Scheme.AFFINE, 128)[3]
        fq_w = fq.get_submodule(name).weight_quantizer(w)
        assert torch.equal(fq_w, deq), name


def test_convert_is_bit_identical_to_fake_quant_and_every_path_is_close():
    _, fq = _quantized()
    q = convert(fq)
    assert {n for n, m in q.named_modules() if isinstance(m, QuantizedModule)} == {
        "conv", "proj", "up", "down"}
    assert tuple(q.proj.scale.shape) == (64, 5) and tuple(q.proj.qdata.shape) == (64, 288)
    assert tuple(q.down.scale.shape) == (10, 2)
    probe = _batch(2)
    with torch.no_grad():
        ref = fq(*probe)
        set_kernel_path(q, "reference")
        assert torch.equal(q(*probe), ref)
        for path in ("auto", "dense"):
            set_kernel_path(q, path)
            assert torch.allclose(q(*probe), ref, rtol=1e-2, atol=1e-2), path


def test_checkpoint_round_trips_ragged_layers(tmp_path):
    _, fq = _quantized()
    q = convert(fq)
    set_kernel_path(q, "reference")
    save(q, tmp_path / "ckpt")
    torch.manual_seed(1)
    back = load(tmp_path / "ckpt", Ragged().eval())
    set_kernel_path(back, "reference")
    for name in ("proj", "down"):
        a, b = q.get_submodule(name), back.get_submodule(name)
        assert torch.equal(a.qdata, b.qdata) and torch.equal(a.scale, b.scale), name
    probe = _batch(3)
    with torch.no_grad():
        assert torch.equal(back(*probe), q(*probe))
    fq_back = load(save(fq, tmp_path / "fq"), Ragged().eval())
    with torch.no_grad():
        assert torch.equal(fq_back(*probe), fq(*probe)), "fake-quant checkpoint too"


def test_learnable_ragged_groups_train():
    """LSQ on a ragged group: the step size of the short group gets a gradient too."""
    spec = QuantSpec(int4, Scheme.SYMMETRIC, PerGroup(128, -1), learnable=True)
    recipe = Recipe([Rule(ByType("Linear"), LayerConfig(weight=spec))])
    _, fq = _quantized(recipe)
    fq.train()
    fq(*_batch(4)).pow(2).mean().backward()
    scale = fq.proj.weight_quantizer.scale
    assert isinstance(scale, nn.Parameter) and tuple(scale.shape) == (64, 5)
    assert bool((scale.grad[:, -1] != 0).any()), "the short last group learns its step"


def test_digits_cnn_and_a_576_wide_linear_are_no_longer_skipped_at_g128():
    """The digits CNN's layers (K = 9, 144, 288, ...) and an LLM-width projection: at
    ``w4a16-g128`` every one is quantized, none skipped for its width."""
    from lowbit.model.select import select_layers
    from lowbit.zoo.digits import DigitsCNN

    _, records = select_layers(DigitsCNN(), "w4a16-g128")
    assert len(records) == 6 and all(r.action == "quantized" for r in records), \
        [(r.name, r.reason) for r in records if r.action != "quantized"]
    toy = nn.Sequential(nn.Linear(576, 1536), nn.Linear(1536, 576))
    q, recs = quantize_model(toy, "w4a16-g128", [torch.randn(4, 576)])
    assert [r.action for r in recs] == ["quantized", "quantized"]
    assert tuple(q[0].scale.shape) == (1536, 5) and tuple(q[1].scale.shape) == (576, 12)
