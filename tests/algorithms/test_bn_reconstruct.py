"""BatchNorm reconstruction: re-estimated statistics and the least-squares affine patch."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms import ALGORITHMS, BNAffine, BNReestimate, reestimate_batchnorm
from lowbit.algorithms.bn_reconstruct import fit_affine_patch
from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerChannel, PerTensor, Scheme, int4, int8

from .toy_cnn import ToyCNN, images

#: int4 per-channel weights, int8 per-tensor static activations: rounding that visibly hurts
W4_PER_CHANNEL = Recipe((Rule(ByType(("Conv2d", "Linear")), LayerConfig(
    QuantSpec(qtype=int4, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0), method="minmax"),
    QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor(), method="minmax"))),),
    "w4a8-per-channel")
#: int8 per-tensor weights only: the case cross-layer equalisation is for
W8_PER_TENSOR = Recipe((Rule(ByType(("Conv2d", "Linear")), LayerConfig(
    QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerTensor(), method="minmax"),
    None)),), "w8-per-tensor")


def held_out_mse(model, qmodel, batches):
    """Mean squared error of ``qmodel``'s output against the float ``model``'s."""
    with torch.no_grad():
        return float(sum((qmodel(x) - model(x)).pow(2).mean() for x in batches))


def test_fit_affine_patch_matches_least_squares():
    g = torch.Generator().manual_seed(0)
    y_hat = torch.randn(200, 3, generator=g)
    y = y_hat * torch.tensor([1.2, 0.8, 1.0]) + torch.tensor([0.5, -1.0, 0.0]) \
        + 0.05 * torch.randn(200, 3, generator=g)
    a, c = fit_affine_patch(y, y_hat)
    for k in range(3):
        design = torch.stack([y_hat[:, k], torch.ones(200)], 1).double()
        sol = torch.linalg.lstsq(design, y[:, k:k + 1].double()).solution.reshape(-1)
        torch.testing.assert_close(a[k], sol[0], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(c[k], sol[1], rtol=1e-6, atol=1e-8)
    a, _ = fit_affine_patch(y, torch.ones(200, 3))
    assert torch.equal(a, torch.ones(3, dtype=a.dtype)), "a constant column keeps a = 1"


def test_reestimate_gives_the_statistics_of_the_models_own_activations():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    calib = images(3)
    reestimate_batchnorm(model, calib)
    feats = torch.cat([model[0](x).detach() for x in calib])  # [N, 4, 4, 4]
    torch.testing.assert_close(model[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-5,
                               atol=1e-6)
    # each batch contributes its unbiased variance, averaged over batches
    per_batch = torch.stack([model[0](x).detach().transpose(0, 1).reshape(4, -1).var(1)
                             for x in calib])
    torch.testing.assert_close(model[1].running_var, per_batch.mean(0), rtol=1e-5, atol=1e-6)
    assert not model.training and model[1].momentum == 0.1


def test_reestimate_lowers_the_error_on_held_out_data():
    model, calib, held_out = ToyCNN(), images(6), images(4, seed=9)
    reestimate_batchnorm(model, calib)  # float statistics that are the data's, as if trained
    plain, _ = lowbit.quantize_model(model, W4_PER_CHANNEL, calib, convert=False)
    fixed, records = lowbit.quantize_model(model, W4_PER_CHANNEL, calib,
                                           algorithms=["bn_reestimate"], convert=False)
    assert {r.name: r.metrics.get("bn_reestimate") for r in records}["dw"] == "dw_bn"
    assert held_out_mse(model, fixed, held_out) < held_out_mse(model, plain, held_out)


def test_affine_patch_beats_plain_rounding_on_held_out_data():
    model, calib, held_out = ToyCNN(), images(6), images(4, seed=9)
    plain, _ = lowbit.quantize_model(model, W4_PER_CHANNEL, calib, algorithms=["bn_fold"],
                                     convert=False)
    fixed, records = lowbit.quantize_model(model, W4_PER_CHANNEL, calib,
                                           algorithms=["bn_fold", "bn_affine"], convert=False)
    patched = [r.name for r in records if "bn_affine_a_min" in r.metrics]
    assert patched == ["conv", "dw", "pw", "fc"], "only the layers whose BN was folded"
    assert held_out_mse(model, fixed, held_out) < held_out_mse(model, plain, held_out)


def test_registered_and_checked():
    assert ALGORITHMS["bn_reestimate"] is BNReestimate and ALGORITHMS["bn_affine"] is BNAffine
    with pytest.raises(ConfigError, match="BNAffine.layers"):
        BNAffine(layers="some")
    with pytest.raises(ConfigError, match="a_min"):
        BNAffine(a_min=2.0)
