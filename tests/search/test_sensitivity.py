"""The sweeps equal what preparing the model with one layer (or all but one) would measure."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.model import calibrate, prepare, quant_modules
from lowbit.recipe import AnyModule, ByName, ByType, Recipe, Rule
from lowbit.search.scoring import Scorer
from lowbit.search.sensitivity import float_only, quantize_only
from lowbit.errors import ConfigError

W4A8 = lowbit.recipe_from_flags(quantize_all=True, quant_bits=4).rules[0].config


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 4))


def calibrated(model, recipe, batches):
    q = prepare(model, recipe, example_inputs=batches[0])
    with calibrate(q):
        for b in batches:
            q(b)
    return q


def test_sweeps_match_separately_prepared_models():
    model = mlp()
    batches = [torch.randn(8, 16) for _ in range(3)]
    scorer = Scorer(model, batches)
    every = Recipe((Rule(ByType(("Linear",)), W4A8),))
    q = calibrated(model, every, batches)
    alone = quantize_only(q, scorer)
    rec = float_only(q, scorer)
    for name in ("0", "2", "4"):
        only = calibrated(model, Recipe((Rule(ByName(name), W4A8),)), batches)
        assert alone.losses[name] == pytest.approx(scorer.loss(only), abs=1e-7)
        but = calibrated(model, Recipe((Rule(ByName(name), None), Rule(AnyModule(), W4A8))),
                         batches)
        assert rec.losses[name] == pytest.approx(alone.all_quantized - scorer.loss(but), abs=1e-7)
    assert alone.all_quantized == pytest.approx(scorer.loss(q))
    assert all(m.weight_quantizer.enabled and m.act_quantizer.enabled
               for _, m in quant_modules(q))  # switched back on


def test_unknown_layer_names_are_rejected():
    model = mlp()
    q = calibrated(model, Recipe((Rule(ByType(("Linear",)), W4A8),)), [torch.randn(2, 16)])
    with pytest.raises(ConfigError, match="names"):
        quantize_only(q, Scorer(model, [torch.randn(2, 16)]), names=["nope"])
    with pytest.raises(ConfigError, match="prepared by lowbit"):
        quantize_only(model, Scorer(model, [torch.randn(2, 16)]))


def test_baked_float_only_is_bit_identical_and_restores_the_weights():
    """With the float source, weights are quantized once, not per forward: same losses
    exactly, and afterwards the prepared model holds its float weights again."""
    model = mlp()
    batches = [torch.randn(8, 16) for _ in range(3)]
    scorer = Scorer(model, batches)
    q = calibrated(model, Recipe((Rule(ByType(("Linear",)), W4A8),)), batches)
    before = {n: p.detach().clone() for n, p in q.named_parameters()}
    out_before = q(batches[0])
    plain = float_only(q, scorer)
    baked = float_only(q, scorer, source=model)
    assert baked.losses == plain.losses and baked.all_quantized == plain.all_quantized
    for n, p in q.named_parameters():
        assert torch.equal(p, before[n]), n
    assert torch.equal(q(batches[0]), out_before)
    assert all(m.weight_quantizer.enabled for _, m in quant_modules(q))


def test_baking_quantizes_each_weight_once_not_per_forward(monkeypatch):
    model = mlp()
    batches = [torch.randn(8, 16) for _ in range(3)]
    scorer = Scorer(model, batches)
    q = calibrated(model, Recipe((Rule(ByType(("Linear",)), W4A8),)), batches)
    calls = []
    for name, m in quant_modules(q):
        wq = m.weight_quantizer
        monkeypatch.setattr(wq, "forward", (lambda f, n: lambda x: calls.append(n) or f(x))(
            wq.forward, name))
    float_only(q, scorer, source=model)
    baked = len(calls)
    calls.clear()
    float_only(q, scorer)
    # 3 layers baked once each, plus one re-bake per layer after its float turn
    assert baked == 3 + 3
    assert len(calls) > baked  # per forward: 3 batches x (1 + 3 turns) x layers


def test_baking_skips_layers_whose_weight_differs_from_the_source():
    from lowbit.search.sensitivity import baked_weights

    model = mlp()
    batches = [torch.randn(8, 16) for _ in range(2)]
    q = calibrated(model, Recipe((Rule(ByType(("Linear",)), W4A8),)), batches)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # the source no longer matches layer "0"
    with baked_weights(q, model) as baked:
        assert set(baked.sources) == {"2", "4"}
        assert q[0].weight_quantizer.enabled and not q[2].weight_quantizer.enabled
    with baked_weights(q, None) as baked:
        assert baked.sources == {}
