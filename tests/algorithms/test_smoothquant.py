"""SmoothQuant: exact folding (float output unchanged), scales, records, config errors."""

import pytest
import torch

import lowbit
from lowbit.algorithms.smoothquant import SmoothQuant, smooth_scales
from lowbit.errors import ConfigError

from .test__fold import SharedNorm, _with_blocks
from .toy import batches

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread is faster


def test_smooth_scales_follow_eq_4():
    x, w = torch.tensor([8.0, 1.0]), torch.tensor([2.0, 4.0])
    assert torch.allclose(smooth_scales(x, w, 0.5), torch.tensor([2.0, 0.5]))
    assert torch.allclose(smooth_scales(x, w, 1.0), x)


def test_smoothquant_keeps_the_float_model_and_records_what_it_folded():
    model, data = _with_blocks(SharedNorm), batches(2)
    with torch.no_grad():  # an outlier channel in the block inputs' norm output
        model.layers[0].norm.weight[3] = 30.0
    fake, records = lowbit.quantize_model(model, "w8a8", data, convert=False,
                                          algorithms=[SmoothQuant(alpha=0.6)])
    by_name = {r.name: r for r in records}
    assert by_name["layers.0.a"].metrics["smoothquant_folded_into"] == "norm"
    # out reads relu(a(n)) * b(n): b's output rows take the scale exactly
    assert by_name["layers.0.out"].metrics["smoothquant_folded_into"] == "b"
    assert float(fake.layers[0].norm.weight[3].detach()) < 30.0  # the outlier moved into the weights
    for module in fake.modules():
        if hasattr(module, "set_fake_quant"):
            module.set_fake_quant(False)
    with torch.no_grad():
        for x, mask in data:
            ref = model(x, mask=mask)
            assert float((fake(x, mask=mask) - ref).norm() / ref.norm()) <= 1e-5


def test_an_inexact_fold_is_refused_and_recorded():
    model = _with_blocks(lambda: SharedNorm(residual_uses_norm=True))
    _, records = lowbit.quantize_model(model, "w8a8", batches(2), convert=False,
                                       algorithms=[SmoothQuant(alpha=0.6)])
    metrics = {r.name: r.metrics for r in records}["layers.0.a"]
    assert metrics["smoothquant_skipped"] == "folding would change the block's float output"


def test_smoothquant_then_gptq_compose():
    fake, records = lowbit.quantize_model(_with_blocks(SharedNorm), "w8a8", batches(2),
                                          algorithms=["smoothquant", "gptq"])
    metrics = {r.name: r.metrics for r in records}["layers.1.b"]
    assert "smoothquant_folded_into" in metrics and "gptq_output_mse" in metrics


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "half", True])
def test_bad_alpha_is_rejected(alpha):
    with pytest.raises(ConfigError, match="SmoothQuant.alpha"):
        SmoothQuant(alpha=alpha)
