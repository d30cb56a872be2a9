"""AWQ: the scale search never loses to plain rounding on its own objective; exact folding."""

import pytest
import torch

import lowbit
from lowbit.algorithms.awq import AWQ, apply_clip, search_clip, search_scales
from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerGroup, Scheme, int3

from .test__fold import SharedNorm, _with_blocks
from .toy import batches

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread is faster

SPEC = QuantSpec(qtype=int3, scheme=Scheme.AFFINE, granularity=PerGroup(8, 1))
RECIPE = Recipe((Rule(ByType(("Linear",)), LayerConfig(SPEC)),), "t-int3-g8")


def test_search_beats_plain_rounding_when_some_channels_are_loud():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=g) * torch.where(torch.arange(32) % 7 == 0, 20.0, 1.0)
    w = torch.randn(16, 32, generator=g)
    s, alpha, err, rtn = search_scales(x, [w], [SPEC], grid=10)
    assert alpha > 0 and err < 0.9 * rtn and s.shape == (32,)


def test_awq_folds_exactly_and_records_its_choice():
    model, data = _with_blocks(SharedNorm), batches(2)
    fake, records = lowbit.quantize_model(model, RECIPE, data, convert=False,
                                          algorithms=[AWQ(grid=5, clip_grid=0)])
    metrics = {r.name: r.metrics for r in records}
    assert metrics["layers.0.a"]["awq_output_mse"] <= metrics["layers.0.a"]["awq_rtn_output_mse"]
    # out reads relu(a(n)) * b(n): scaling b's output rows is exact, so it takes the fold
    assert metrics["layers.0.out"]["awq_folded_into"] == "b"
    for module in fake.modules():
        if hasattr(module, "set_fake_quant"):
            module.set_fake_quant(False)
    with torch.no_grad():
        for x, mask in data:
            ref = model(x, mask=mask)
            assert float((fake(x, mask=mask) - ref).norm() / ref.norm()) <= 1e-5


def _naive_clip_error(x, w, spec, ratio):
    """Output error per row and group of clipping to ``ratio`` (one group at a time)."""
    g = spec.granularity.size
    from lowbit.algorithms.awq import _fake_quant

    wq = _fake_quant(apply_clip(w, ratio), spec)
    out = torch.empty(ratio.shape)
    for o in range(w.shape[0]):
        for j in range(ratio.shape[1]):
            cols = slice(j * g, (j + 1) * g)
            out[o, j] = (x[:, cols] @ (w[o, cols] - wq[o, cols])).pow(2).sum()
    return out


def test_clip_search_picks_per_group_ratios_no_worse_than_no_clipping_or_any_uniform_ratio():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(256, 32, generator=g), torch.randn(12, 32, generator=g)
    w[0, 3] = 9.0  # an outlier: clipping its group pays
    ratio = search_clip(x, w, SPEC, grid=10, max_shrink=0.5)
    assert ratio.shape == (12, 4) and float(ratio.min()) >= 0.5 and float(ratio.max()) <= 1.0
    chosen = _naive_clip_error(x, w, SPEC, ratio)
    for r in (1.0, 0.8, 0.5):
        uniform = _naive_clip_error(x, w, SPEC, torch.full_like(ratio, r))
        assert bool((chosen <= uniform * (1 + 1e-5) + 1e-6).all()), r
    assert float(ratio[0, 0]) < 1.0, "the outlier's group is clipped"
    assert torch.equal(apply_clip(w, torch.ones(12, 4)), w)


class SwiGLU(torch.nn.Module):
    """A decoder MLP: down reads act(gate(n)) * up(n); only up can absorb down's scale."""

    def __init__(self, width=16):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.gate, self.up = torch.nn.Linear(width, 32), torch.nn.Linear(width, 32)
        self.down = torch.nn.Linear(32, width)

    def forward(self, h, mask=None, past_key_values=None, use_cache=False):
        n = self.norm(h)
        return (h + self.down(torch.nn.functional.silu(self.gate(n)) * self.up(n)),)


def test_awq_folds_into_the_preceding_linear_when_exact_and_clips():
    model, data = _with_blocks(SwiGLU), batches(2)
    fake, records = lowbit.quantize_model(model, RECIPE, data, convert=False,
                                          algorithms=[AWQ(grid=5)])
    metrics = {r.name: r.metrics for r in records}
    assert metrics["layers.0.down"]["awq_folded_into"] == "up", "not gate: silu is not linear"
    assert metrics["layers.0.gate"]["awq_folded_into"] == "norm"
    assert all("awq_clip_mean_ratio" in metrics[f"layers.{i}.{n}"]
               for i in (0, 1) for n in ("gate", "up", "down"))
    # clipping changes the float weights; without it the float model is unchanged
    fake, _ = lowbit.quantize_model(model, RECIPE, data, convert=False,
                                    algorithms=[AWQ(grid=5, clip_grid=0)])
    for module in fake.modules():
        if hasattr(module, "set_fake_quant"):
            module.set_fake_quant(False)
    with torch.no_grad():
        for x, mask in data:
            ref = model(x, mask=mask)
            assert float((fake(x, mask=mask) - ref).norm() / ref.norm()) <= 1e-5
    assert not torch.equal(fake.layers[0].up.weight, model.layers[0].up.weight)


@pytest.mark.parametrize("kwargs,match", [({"grid": 0}, "AWQ.grid"), ({"max_rows": 0}, "max_rows"),
                                          ({"clip_max_shrink": 1.0}, "clip_max_shrink"),
                                          ({"clip_grid": -1}, "clip_grid")])
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AWQ(**kwargs)
