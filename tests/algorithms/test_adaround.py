"""AdaRound and AdaQuant: rounding stays on {floor, ceil}, both beat plain rounding on held-out
inputs (layer by layer on a two-layer model, block by block on the toy decoder, on a CNN),
same seed same bytes, records, the iteration/time budget, config errors."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms import _runner_recon as _recon
from lowbit.algorithms.adaround import AdaRound, init_logits, rectified_sigmoid
from lowbit.algorithms.adaquant import AdaQuant, round_ste
from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.presets import linear_conv_recipe
from lowbit.types import PerChannel, PerTensor, Scheme, int3, int8

from .toy import Toy, batches

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread is faster

W3 = QuantSpec(qtype=int3, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0), method="minmax")
A8 = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor(), method="minmax")
W3_ONLY = linear_conv_recipe("w3", LayerConfig(W3, None))
W3A8 = linear_conv_recipe("w3a8", LayerConfig(W3, A8))


def two_layer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 8)).eval()


def rows(n: int, seed: int) -> torch.Tensor:
    """Inputs with correlated features of different sizes (as real activations have)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(16, 16, generator=torch.Generator().manual_seed(7)) / 4
    return (torch.randn(n, 16, generator=g) @ mix) * torch.logspace(0, 0.7, 16)


CALIB = [rows(64, seed) for seed in range(8)]
HELD_OUT = rows(2048, 100)


def held_out_mse(model, qmodel, x=HELD_OUT) -> float:
    with torch.no_grad():
        return float((model(x) - qmodel(x)).pow(2).mean())


def run(model, algo, recipe=W3_ONLY, calib=CALIB, **kw):
    return lowbit.quantize_model(model, recipe, calib, algorithms=[algo] if algo else None,
                                 convert=False, **kw)


def test_rectified_sigmoid_starts_at_the_fractional_part_and_saturates():
    rest = torch.tensor([0.0, 0.25, 0.5, 0.999])
    assert torch.allclose(rectified_sigmoid(init_logits(rest)), rest, atol=1e-5)
    assert rectified_sigmoid(torch.tensor([-50.0, 50.0])).tolist() == [0.0, 1.0]


def test_round_ste_rounds_and_passes_the_gradient_through():
    x = torch.tensor([0.2, 1.7, -2.6], requires_grad=True)
    y = round_ste(x)
    y.sum().backward()
    assert y.tolist() == [0.0, 2.0, -3.0] and x.grad.tolist() == [1.0, 1.0, 1.0]


def test_adaround_codes_are_the_floor_or_the_ceiling_and_some_differ_from_rounding():
    model = two_layer()
    qmodel, records = run(model, AdaRound(iters=150))
    flipped = 0
    for name in ("0", "2"):
        w0 = model.get_submodule(name).weight.detach()
        layer = qmodel.get_submodule(name)
        qp = layer.weight_quantizer.qparams()
        s, z = qp.scale.reshape(-1, 1), qp.zero_point.reshape(-1, 1).float()
        codes = layer.weight.detach() / s + z  # the weight is exactly (q - z) * s
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        codes = codes.round()
        lo = torch.clamp(torch.floor(w0 / s) + z, int3.qmin, int3.qmax)
        hi = torch.clamp(torch.ceil(w0 / s) + z, int3.qmin, int3.qmax)
        assert bool(((codes == lo) | (codes == hi)).all())
        flipped += int((codes != torch.clamp(torch.round(w0 / s) + z, int3.qmin, int3.qmax)).sum())
    assert flipped > 0  # it did change the rounding


@pytest.mark.parametrize("algo", [AdaRound(iters=200), AdaQuant(iters=200)],
                         ids=["adaround", "adaquant"])
@pytest.mark.parametrize("recipe", [W3_ONLY, W3A8], ids=["w3", "w3a8"])
def test_each_algorithm_beats_plain_rounding_on_held_out_inputs(algo, recipe):
    model = two_layer()
    plain, _ = run(model, None, recipe)
    fitted, records = run(model, algo, recipe)
    assert held_out_mse(model, fitted) < 0.9 * held_out_mse(model, plain)
    for r in records:  # layer by layer: this model has no repeated blocks
        assert r.metrics[f"{algo.name}_unit"] == "layer"
        assert r.metrics[f"{algo.name}_output_mse"] < r.metrics[f"{algo.name}_rtn_output_mse"]


@pytest.mark.parametrize("algo", [AdaRound(iters=40), AdaQuant(iters=40)],
                         ids=["adaround", "adaquant"])
def test_block_by_block_on_the_toy_decoder(algo):
    model = Toy(width=16, depth=2).eval()
    data = batches(4)
    plain, _ = run(model, None, W3_ONLY, data)
    fitted, records = run(model, algo, W3_ONLY, data)
    held = batches(4, seed=9)

    def err(q):
        with torch.no_grad():
            return sum(float((model(x, m) - q(x, m)).pow(2).mean()) for x, m in held)
    assert err(fitted) < err(plain)
    units = {r.name: r.metrics.get(f"{algo.name}_unit") for r in records}
    assert units["layers.0.up"] == "block" and units["inp"] is None  # outside the blocks


@pytest.mark.parametrize("algo", ["adaround", "adaquant"])
def test_same_seed_same_bytes_and_the_records_list_the_step(algo):
    model = two_layer()
    spec = {"name": algo, "iters": 30}
    (a, rec_a), (b, _) = [lowbit.quantize_model(model, W3A8, CALIB, algorithms=[spec])
                          for _ in range(2)]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for r in rec_a:
        assert f"weights by {algo}" in r.reason
        assert r.metrics[f"{algo}_iters"] == 30


def test_a_different_seed_changes_the_steps_taken():
    model = two_layer()
    a, _ = run(model, AdaQuant(iters=30, seed=0))
    b, _ = run(model, AdaQuant(iters=30, seed=1))
    assert not torch.equal(a[2].bias, b[2].bias)


def test_the_time_budget_stops_the_fit(monkeypatch):
    ticks = iter(range(10**6))  # a clock that advances one second per reading
    monkeypatch.setattr(_recon, "_clock", lambda: float(next(ticks)))
    _, records = run(two_layer(), AdaRound(iters=1000, seconds=5))
    # readings at 1, 2, 3, 4 s start a step; the one at 5 s stops the fit
    assert [r.metrics["adaround_iters"] for r in records] == [4, 4]
    _, records = run(two_layer(), AdaQuant(iters=3, seconds=None))
    assert [r.metrics["adaquant_iters"] for r in records] == [3, 3]


def test_a_fit_no_better_than_plain_rounding_is_dropped():
    model = two_layer()
    plain, _ = run(model, None)
    same, records = run(model, AdaQuant(iters=0))
    assert all(r.metrics["adaquant_kept"] is False for r in records)
    assert torch.equal(same[0].weight, plain[0].weight)


def test_adaquant_changes_the_grid_and_convert_stores_its_codes():
    model = two_layer()
    fake, records = run(model, AdaQuant(iters=100))
    assert any(r.metrics["adaquant_scale_change"] > 0 for r in records)
    converted, _ = lowbit.quantize_model(model, W3_ONLY, CALIB,
                                         algorithms=[AdaQuant(iters=100)])
    with torch.no_grad():
        assert torch.allclose(fake(HELD_OUT), converted(HELD_OUT), atol=1e-4)


def test_digits_cnn_layer_by_layer_at_two_bits(trained_digits):
    from lowbit.types import int2
    from lowbit.zoo.digits import accuracy, calibration_batches

    model, data, _ = trained_digits
    recipe = linear_conv_recipe("w2a8", LayerConfig(W3.replace(qtype=int2), A8))
    calib = list(calibration_batches(data, 4))
    plain, _ = lowbit.quantize_model(model, recipe, calib)
    fitted, records = lowbit.quantize_model(model, recipe, calib, blocks="layers",
                                            algorithms=[AdaRound(iters=150, lr=0.1)])
    assert {r.metrics["adaround_unit"] for r in records} == {"layer"}
    assert accuracy(fitted, data.x_test, data.y_test) > \
        accuracy(plain, data.x_test, data.y_test) + 10


@pytest.mark.parametrize("bad", [dict(iters=-1), dict(seconds=-2), dict(lr=0), dict(beta=(1,)),
                                 dict(reg=-1), dict(warmup=1.0), dict(target="nope")])
def test_adaround_config_errors(bad):
    with pytest.raises(ConfigError, match="AdaRound"):
        AdaRound(**bad)


def test_adaquant_config_errors_and_round_trip():
    with pytest.raises(ConfigError, match="at least one"):
        AdaQuant(weights=False, scale=False, bias=False)
    with pytest.raises(ConfigError, match="AdaQuant.iters"):
        AdaQuant(iters=1.5)
    algo = AdaRound(iters=7, beta=[10, 3])
    assert lowbit.algorithms.make_algorithm(algo.to_dict()) == algo
    names = [a.name for a in lowbit.algorithms.parse_algorithms("adaround,adaquant")]
    assert names == ["adaround", "adaquant"]


def test_adaquant_sign_descent_keeps_offsets_within_half_a_step():
    model = two_layer()
    plain, _ = run(model, None)
    algo = AdaQuant(iters=100, optimizer="sign", lr=0.01, max_offset=0.5, scale=False,
                    bias=False)
    fitted, records = run(model, algo)
    assert held_out_mse(model, fitted) < held_out_mse(model, plain)
    for name in ("0", "2"):
        w0 = model.get_submodule(name).weight.detach()
        layer = fitted.get_submodule(name)
        s = layer.weight_quantizer.qparams().scale.reshape(-1, 1)  # unchanged: scale=False
        codes = (layer.weight.detach() / s).round()
        assert bool(((codes - w0 / s).abs() <= 1.0 + 1e-4).all())  # round(w/s + V), |V| ≤ ½
    with pytest.raises(ConfigError, match="AdaQuant.optimizer"):
        AdaQuant(optimizer="sgd")
    with pytest.raises(ConfigError, match="AdaQuant.max_offset"):
        AdaQuant(max_offset=0)


@pytest.mark.slow
def test_mobilenet_digits_per_channel_w4a8_adaround_recovers_most_of_the_gap(
        trained_mobilenet_digits):
    from lowbit.types import int4
    from lowbit.zoo.digits import accuracy

    model, data = trained_mobilenet_digits
    recipe = linear_conv_recipe("w4a8", LayerConfig(W3.replace(qtype=int4), A8))
    calib = list(data.x_calib[:256].split(32))
    acc = [accuracy(lowbit.quantize_model(model, recipe, calib, algorithms=algos,
                                          blocks="layers")[0], data.x_test, data.y_test)
           for algos in (None, [AdaRound(iters=100, progress=False)])]
    float_acc = accuracy(model, data.x_test, data.y_test)
    assert acc[1] - acc[0] > 0.5 * (float_acc - acc[0]) > 0
