"""Input groups found by hooks, and exact folding of per-channel scales."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms._fold import find_input_groups, fold_scales
from lowbit.algorithms._runner import run_blocks

from .toy import Toy, batches

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread is faster


class SharedNorm(nn.Module):
    """Two Linears share the norm's output; the residual also uses it (a fold is not exact)."""

    def __init__(self, width=16, residual_uses_norm=False):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.residual_uses_norm = residual_uses_norm

    def forward(self, h, mask=None, past_key_values=None, use_cache=False):
        n = self.norm(h)
        y = self.out(torch.relu(self.a(n)) * self.b(n))
        return ((n if self.residual_uses_norm else h) + y,)


def _with_blocks(block_factory):
    model = Toy(width=16)
    model.layers = nn.ModuleList(block_factory() for _ in range(2))
    model.inp = nn.Linear(8, 16)
    model.head = nn.Linear(16, 4)
    with torch.no_grad():  # a non-trivial norm affine
        for layer in model.layers:
            layer.norm.weight.uniform_(0.5, 2.0)
            layer.norm.bias.uniform_(-0.5, 0.5)
    return model


def _prepared(model):
    fake = lowbit.prepare(model, "w8a16")
    with lowbit.calibrate(fake):
        pass
    return fake


def test_groups_share_an_input_and_know_their_norm_producer():
    fake, found = _prepared(_with_blocks(SharedNorm)), {}

    def step(ctx):
        found[ctx.index] = [(g.names, g.producer_name, len(g.inputs))
                            for g in find_input_groups(ctx)]

    run_blocks(fake, batches(2), step)
    assert found[0] == [(["a", "b"], "norm", 2), (["out"], None, 2)]


def test_folding_leaves_the_float_output_unchanged_and_refuses_an_inexact_fold():
    for residual_uses_norm, expect in ((False, True), (True, False)):
        model = _with_blocks(lambda: SharedNorm(residual_uses_norm=residual_uses_norm))
        fake, data = _prepared(model), batches(2)
        kept = []

        def step(ctx):
            group = find_input_groups(ctx)[0]
            s = torch.linspace(0.25, 4.0, 16)
            kept.append(fold_scales(ctx, group, s))

        run_blocks(fake, data, step)
        assert kept == [expect, expect]
        for module in fake.modules():
            if hasattr(module, "set_fake_quant"):
                module.set_fake_quant(False)
        with torch.no_grad():
            for x, mask in data:
                ref, out = model(x, mask=mask), fake(x, mask=mask)
                assert float((out - ref).norm() / ref.norm()) <= 1e-5
        if expect:  # the weights really moved (the scale went into the layers)
            assert not torch.equal(fake.layers[0].a.weight, model.layers[0].a.weight)
