"""GPTQ with a ragged last group (a group size that does not divide K): the short group
gets its own qparams, an identity Hessian reduces GPTQ to the naive per-group rounding, a
correlated one beats it, and the result round-trips through convert and a checkpoint."""

import pytest
import torch

import lowbit
from lowbit.algorithms.gptq import GPTQ, HessianAccumulator, gptq_quantize
from lowbit.config import LayerConfig, QuantSpec
from lowbit.nn.quantized import set_kernel_path
from lowbit.primitives.affine import choose_qparams, dequantize, fake_quantize, quantize
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerGroup, Scheme, int4

from ..primitives.test_ragged import naive_groups
from .toy import Toy, batches

pytestmark = pytest.mark.usefixtures("single_thread")

SPEC = QuantSpec(qtype=int4, scheme=Scheme.AFFINE, granularity=PerGroup(16, 1))
MODES = [(False, False), (False, True), (True, False), (True, True)]  # (act_order, static)


@pytest.mark.parametrize("act_order, static", MODES)
def test_identity_hessian_gives_the_naive_per_group_rounding(act_order, static):
    """With H = I no error is spread, so GPTQ is round-to-nearest group by group."""
    w = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))   # 16 + 16 + 8
    res = gptq_quantize(w, torch.eye(40), SPEC, act_order=act_order, static_groups=static,
                        block_size=8)
    scales, zeros, _, deq = naive_groups(w, int4, Scheme.AFFINE, 16)
    assert res.qparams.block_size == (1, 16) and tuple(res.qparams.scale.shape) == (8, 3)
    assert torch.equal(res.qparams.scale, scales) and torch.equal(res.qparams.zero_point, zeros)
    assert torch.equal(res.weight, deq)


@pytest.mark.parametrize("act_order, static", MODES)
def test_ragged_gptq_beats_plain_rounding_and_its_codes_round_trip(act_order, static):
    g = torch.Generator().manual_seed(1)
    k = 40
    mix = torch.randn(k, k, generator=g) / k ** 0.5
    calib, held = torch.randn(800, k, generator=g) @ mix, torch.randn(800, k, generator=g) @ mix
    acc = HessianAccumulator(k)
    acc.add(calib)
    w = torch.randn(16, k, generator=g)
    res = gptq_quantize(w, acc.hessian(), SPEC, act_order=act_order, static_groups=static)
    rtn = fake_quantize(w, choose_qparams(w, int4, Scheme.AFFINE, PerGroup(16, 1)))
    err = ((w - res.weight) @ held.T).pow(2).mean()
    assert err < 0.8 * ((w - rtn) @ held.T).pow(2).mean()
    assert torch.equal(dequantize(quantize(res.weight, res.qparams), res.qparams), res.weight)


def test_ragged_gptq_model_round_trips_through_convert_and_checkpoint(tmp_path):
    """Width 24 at groups of 16: every projection but the input one has a short group."""
    recipe = Recipe((Rule(ByType(("Linear",)), LayerConfig(SPEC)),), "t-g16")
    data = batches(2)
    fake, records = lowbit.quantize_model(Toy(width=24), recipe, data, convert=False,
                                          algorithms=[GPTQ(block_size=8)])
    assert all(r.action == "quantized" for r in records)
    assert all("gptq_output_mse" in r.metrics for r in records if r.name.startswith("layers."))
    real = lowbit.convert(fake)
    assert tuple(real.layers[0].up.scale.shape) == (48, 2), "24 inputs: 16 + a short 8"
    set_kernel_path(real, "reference")
    x, mask = data[0]
    with torch.no_grad():
        assert torch.equal(real(x, mask=mask), fake(x, mask=mask))
        loaded = lowbit.load(lowbit.save(real, tmp_path / "q"), Toy(width=24, seed=9))
        set_kernel_path(loaded, "reference")
        assert torch.equal(loaded(x, mask=mask), real(x, mask=mask))
