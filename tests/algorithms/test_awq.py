"""AWQ: the scale search never loses to plain rounding on its own objective; exact folding."""

import pytest
import torch

import lowbit
from lowbit.algorithms.awq import AWQ, search_scales
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
                                          algorithms=[AWQ(grid=5)])
    metrics = {r.name: r.metrics for r in records}
    assert metrics["layers.0.a"]["awq_output_mse"] <= metrics["layers.0.a"]["awq_rtn_output_mse"]
    assert metrics["layers.0.out"]["awq_skipped"]
    for module in fake.modules():
        if hasattr(module, "set_fake_quant"):
            module.set_fake_quant(False)
    with torch.no_grad():
        for x, mask in data:
            ref = model(x, mask=mask)
            assert float((fake(x, mask=mask) - ref).norm() / ref.norm()) <= 1e-5


@pytest.mark.parametrize("kwargs,match", [({"grid": 0}, "AWQ.grid"), ({"max_rows": 0}, "max_rows")])
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AWQ(**kwargs)
