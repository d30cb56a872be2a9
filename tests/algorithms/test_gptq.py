"""GPTQ: the core against plain rounding, lazy-block invariance, act-order round trips
through convert and checkpoints, the damping retry, config errors."""

import json

import pytest
import torch

import lowbit
from lowbit.algorithms.gptq import (GPTQ, HessianAccumulator, gptq_quantize, inverse_cholesky,
                                    output_mse)
from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError, InputError
from lowbit.primitives.affine import choose_qparams, dequantize, fake_quantize, quantize
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.records import LayerRecord
from lowbit.types import PerChannel, PerGroup, Scheme, int3, int4

from .toy import Toy, batches

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread is faster


def _correlated(n, k, seed):
    """Inputs with strongly correlated features (as real activations have)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(0)) / k ** 0.5
    scales = torch.logspace(0, 1, k)[torch.randperm(k, generator=torch.Generator().manual_seed(0))]
    return (torch.randn(n, k, generator=g) @ mix) * scales + 0.1 * torch.randn(n, k, generator=g)


def _hessian(x, dtype=torch.float32):
    acc = HessianAccumulator(x.shape[1], dtype)
    for chunk in x.split(100):
        acc.add(chunk)
    return acc.hessian()


SPECS = {
    "int4-sym-channel": QuantSpec(qtype=int4, granularity=PerChannel(0)),
    "int4-affine-g16": QuantSpec(qtype=int4, scheme=Scheme.AFFINE, granularity=PerGroup(16, 1)),
    "int3-sym-g16": QuantSpec(qtype=int3, granularity=PerGroup(16, 1)),
}


def test_hessian_accumulator_is_two_xtx_over_n():
    x = torch.randn(300, 8, dtype=torch.float64)
    assert torch.allclose(_hessian(x, torch.float64), 2 * x.T @ x / 300)
    with pytest.raises(InputError, match="no calibration rows"):
        HessianAccumulator(4).hessian()


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_plain_rounding_on_held_out_inputs(name, act_order):
    spec = SPECS[name]
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    calib, held_out = _correlated(1024, 64, seed=1), _correlated(1024, 64, seed=2)
    res = gptq_quantize(w, _hessian(calib), spec, act_order=act_order, block_size=32)
    rtn = fake_quantize(w, choose_qparams(w, spec.qtype, spec.scheme, spec.granularity))
    err_gptq = ((w - res.weight) @ held_out.T).pow(2).mean()
    err_rtn = ((w - rtn) @ held_out.T).pow(2).mean()
    assert err_gptq < 0.7 * err_rtn, (float(err_gptq), float(err_rtn))
    # the weight is exactly the dequantized codes of the returned qparams
    codes = quantize(res.weight, res.qparams)
    assert torch.equal(dequantize(codes, res.qparams), res.weight)
    assert codes.min() >= spec.qtype.qmin and codes.max() <= spec.qtype.qmax


@pytest.mark.parametrize("act_order,static", [(False, False), (False, True), (True, False)])
def test_block_size_1_and_128_agree(act_order, static):
    spec = SPECS["int4-affine-g16"]
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = _hessian(_correlated(512, 64, seed=5), torch.float64)
    a = gptq_quantize(w, h, spec, block_size=1, act_order=act_order, static_groups=static)
    b = gptq_quantize(w, h, spec, block_size=128, act_order=act_order, static_groups=static)
    # float64 arithmetic in a different association order: equal codes, scales within 1e-6
    assert torch.allclose(a.qparams.scale, b.qparams.scale, rtol=1e-6)
    assert torch.equal(a.qparams.zero_point, b.qparams.zero_point)
    assert torch.allclose(a.weight, b.weight, rtol=1e-6, atol=1e-7)


def test_a_rank_deficient_hessian_takes_the_retry_path_and_the_record_says_so():
    x = torch.randn(200, 2) @ torch.randn(2, 16)  # rank 2 in 16 dimensions
    h = _hessian(x)
    with pytest.raises(InputError, match="not positive definite"):
        inverse_cholesky(h, 0.0, max_retries=0)
    w = torch.randn(8, 16)
    res = gptq_quantize(w, h, SPECS["int4-sym-channel"], damp=0.0)
    assert res.retries >= 1 and res.damp >= 1e-3
    layer = lowbit.prepare(torch.nn.Sequential(torch.nn.Linear(16, 8)), "w8a16")
    with lowbit.calibrate(layer):
        pass
    record = LayerRecord("0", "Linear", "quantized")
    GPTQ(damp=0.0).quantize_layer(layer[0], h, record)
    assert record.metrics["gptq_damp_retries"] >= 1 and "damping raised" in record.reason
    assert record.metrics["gptq_output_mse"] <= record.metrics["rtn_output_mse"]


def test_output_mse_is_the_mean_squared_output_error():
    x, d = torch.randn(50, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    assert output_mse(d, _hessian(x, torch.float64)) == pytest.approx(
        float((x @ d.T).pow(2).mean()))


RECIPE = Recipe((Rule(ByType(("Linear",)), LayerConfig(SPECS["int4-affine-g16"])),), "t-g16")


def test_act_order_static_groups_round_trip_through_convert_and_checkpoint(tmp_path):
    data = batches(2)
    fake, records = lowbit.quantize_model(Toy(), RECIPE, data, convert=False,
                                          algorithms=[GPTQ(act_order=True, block_size=8)])
    real = lowbit.convert(fake)
    x, mask = data[0]
    with torch.no_grad():
        for name in ("layers.0.up", "layers.2.down", "head"):
            q, r = fake.get_submodule(name), real.get_submodule(name)
            assert torch.equal(r.dequantized_weight(), q.quantized_weight())
        in_blocks = [r for r in records if r.name.startswith("layers.")]
        assert all("gptq_output_mse" in r.metrics for r in in_blocks)
        assert "gptq_output_mse" not in next(r for r in records if r.name == "head").metrics
        for module in real.modules():
            if hasattr(module, "set_kernel_backend"):
                module.set_kernel_backend("reference")
        assert torch.equal(real(x, mask=mask), fake(x, mask=mask))
        lowbit.save(real, tmp_path / "q")
        loaded = lowbit.load(tmp_path / "q", Toy(seed=9))
        for module in loaded.modules():
            if hasattr(module, "set_kernel_backend"):
                module.set_kernel_backend("reference")
        assert torch.equal(loaded(x, mask=mask), real(x, mask=mask))
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["algorithms"] == [GPTQ(act_order=True, block_size=8).to_dict()]
    assert lowbit.lowbit_state(loaded).algorithms == manifest["algorithms"]


def test_gptq_model_is_closer_to_float_than_plain_rounding_and_deterministic(tmp_path):
    data, held = batches(4, seed=1), batches(2, seed=7)
    model = Toy()
    rtn, _ = lowbit.quantize_model(model, RECIPE, data)
    gptq, _ = lowbit.quantize_model(model, RECIPE, data, algorithms=["gptq"])
    again, _ = lowbit.quantize_model(model, RECIPE, data, algorithms=["gptq"])
    with torch.no_grad():
        err = {k: sum(float((m(x, mask=k2) - model(x, mask=k2)).pow(2).mean())
                      for x, k2 in held) for k, m in (("rtn", rtn), ("gptq", gptq))}
    assert err["gptq"] < err["rtn"], err
    lowbit.save(gptq, tmp_path / "a")
    lowbit.save(again, tmp_path / "b")
    sha = [json.loads((tmp_path / d / "manifest.json").read_text())["weights_sha256"]
           for d in ("a", "b")]
    assert sha[0] == sha[1]


@pytest.mark.parametrize("kwargs,match", [
    ({"damp": -1}, "GPTQ.damp"), ({"block_size": 0}, "GPTQ.block_size"),
    ({"act_order": "yes"}, "GPTQ.act_order"), ({"hessian_dtype": "half"}, "hessian_dtype"),
    ({"max_retries": -1}, "max_retries")])
def test_bad_gptq_options_are_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GPTQ(**kwargs)


def test_inverse_cholesky_matches_the_naive_factor_of_the_inverse():
    h = _hessian(_correlated(400, 24, seed=8), torch.float64)
    upper, damp, retries = inverse_cholesky(h, 0.01, max_retries=0)
    damped = h + 0.01 * torch.diagonal(h).mean() * torch.eye(24, dtype=torch.float64)
    naive = torch.linalg.cholesky(torch.linalg.inv(damped)).mT  # upper, H⁻¹ = Uᵀ U
    assert (damp, retries) == (0.01, 0)
    assert torch.allclose(upper, naive, rtol=1e-8, atol=1e-10)
    assert torch.equal(upper, upper.triu())


def test_layers_reading_one_input_share_one_hessian_and_stacked_gptq_equals_per_layer():
    from lowbit.algorithms.gptq import SharedHessians

    width = 16

    class Fan(torch.nn.Module):  # a and b read one tensor, c another
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(width, 8), torch.nn.Linear(width, 8)
            self.c = torch.nn.Linear(8, width)

        def forward(self, x):
            return self.c(self.a(x) * self.b(x))

    fake = lowbit.prepare(Fan(), Recipe((Rule(ByType(("Linear",)),
                                              LayerConfig(SPECS["int4-affine-g16"]
                                                          .replace(granularity=PerGroup(4, 1)))),)))
    with lowbit.calibrate(fake):
        pass
    shared = SharedHessians()
    hooks = [m.register_forward_pre_hook(lambda mod, args, _n=n: shared.add(_n, mod, args[0]))
             for n, m in (("a", fake.a), ("b", fake.b), ("c", fake.c))]
    xs = [_correlated(64, width, seed=s) for s in (1, 2, 3)]
    with torch.no_grad():
        for x in xs:
            fake(x)
    for h in hooks:
        h.remove()
    found = dict((tuple(names), hess) for names, hess in shared.hessians())
    assert set(found) == {("a", "b"), ("c",)}
    assert torch.allclose(found[("a", "b")], _hessian(torch.cat(xs)), rtol=1e-5, atol=1e-6)

    one_by_one = [GPTQ(act_order=True).quantize_layer(
        _copy_layer(m), found[("a", "b")]) for m in (fake.a, fake.b)]
    GPTQ(act_order=True).quantize_layers([fake.a, fake.b], found[("a", "b")])
    for m, res in zip((fake.a, fake.b), one_by_one):
        assert torch.allclose(m.weight, res.weight, atol=1e-6)
        assert torch.equal(m.weight_quantizer.qparams().scale, res.qparams.scale)


def _copy_layer(module):
    import copy
    return copy.deepcopy(module)


def test_replaying_a_block_quantizes_each_weight_once_with_the_same_outputs():
    from lowbit.algorithms._runner import BlockInputs, run_block, weights_quantized_once

    fake = lowbit.prepare(Toy(), RECIPE)
    with lowbit.calibrate(fake):
        pass
    block = fake.layers[0]
    x, mask = batches(1)[0]
    inputs = BlockInputs([(torch.randn(2, 16, 32),)], [{"mask": mask}])
    calls = []
    handle = block.up.weight_quantizer.register_forward_hook(lambda *a: calls.append(1))
    expected = block(*inputs.args[0], **inputs.kwargs[0])[0]
    calls.clear()
    with weights_quantized_once(block):
        assert len(calls) == 1
        block(*inputs.args[0], **inputs.kwargs[0])
        block(*inputs.args[0], **inputs.kwargs[0])
        assert len(calls) == 1, "no re-quantization inside the context"
    handle.remove()
    assert "quantized_weight" not in vars(block.up), "the patch is undone"
    assert torch.equal(run_block(block, inputs)[0], expected)
