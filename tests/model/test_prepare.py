"""prepare and calibrate: which layers are swapped, copies vs in place, observed batches,
frozen ranges, start/end_calibration, uncalibrated errors, shared layers, to_float."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError, StateError
from lowbit.model.prepare import (STATE_ATTR, calibrate, lowbit_state, prepare, quant_modules,
                                  to_float)
from lowbit.nn.qat import QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear
from lowbit.nn.quantizer import TensorQuantizer
from lowbit.recipe import ByName, ByType, Recipe, Rule
from lowbit.types import PerChannel, PerTensor, Scheme, int8


class Zoo(nn.Module):
    """Every layer kind lowbit swaps, plus layers it must leave alone."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pointwise = nn.Conv2d(8, 8, 1)              # 1x1
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)                      # not quantizable: left alone
        self.bn = nn.BatchNorm2d(8)                      # not quantizable: left alone
        self.fc = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        t = self.conv1d(self.emb(ids).transpose(1, 2)).mean(-1)     # (B, 8)
        x = F.relu(self.bn(self.conv(image)))                        # (B, 8, 6, 6)
        x = self.depthwise(self.grouped(self.pointwise(x))).mean((2, 3))  # (B, 8)
        return self.fc(torch.cat([self.norm(t), x], dim=1))          # (B, 4)


QAT_TYPE = {"emb": QuantEmbedding, "conv1d": QuantConv1d, "conv": QuantConv2d,
            "pointwise": QuantConv2d, "grouped": QuantConv2d, "depthwise": QuantConv2d,
            "fc": QuantLinear}


def batch(seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 12, (2, 5), generator=g),
            torch.randn(2, 1, 6, 6, generator=g) * scale)


@pytest.fixture
def zoo() -> Zoo:
    torch.manual_seed(0)
    return Zoo().eval()


def act_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.act_quantizer.scale.detach().clone() for name, m in quant_modules(model)
            if m.act_quantizer is not None}


def n_observed(model: nn.Module) -> dict[str, int]:
    return {name: m.act_quantizer.summary()["n_observed"] for name, m in quant_modules(model)
            if m.act_quantizer is not None}


def calibrated(model: nn.Module, batches, **kw) -> nn.Module:
    with calibrate(model, **kw):
        for b in batches:
            model(*b)
    return model


# ---------------------------------------------------------------------------- prepare


def test_prepare_swaps_exactly_the_quantizable_layers_keeping_their_geometry(zoo):
    fq = prepare(zoo, "w8a8-static")
    swapped = {name: type(m) for name, m in quant_modules(fq)}
    assert swapped == QAT_TYPE, "every Linear/Conv/Embedding and nothing else is swapped"
    assert type(fq.norm) is nn.LayerNorm and type(fq.bn) is nn.BatchNorm2d
    for name in ("conv", "pointwise", "grouped", "depthwise"):
        new, old = getattr(fq, name), getattr(zoo, name)
        assert (new.kernel_size, new.groups, new.padding) == (old.kernel_size, old.groups,
                                                              old.padding), name
    assert fq.emb.act_quantizer is None, "an Embedding's indices are never quantized"
    assert fq.emb.weight_quantizer is not None
    assert all(m.act_quantizer is not None for n, m in quant_modules(fq) if n != "emb")
    records = {r.name: r.action for r in lowbit_state(fq).records}
    assert records == dict.fromkeys(QAT_TYPE, "quantized")


def test_prepare_copies_and_leaves_the_input_model_untouched(zoo):
    before = {k: v.clone() for k, v in zoo.state_dict().items()}
    types_before = {n: type(m) for n, m in zoo.named_modules()}
    fq = prepare(zoo, "w8a8-static")
    assert fq is not zoo
    assert {n: type(m) for n, m in zoo.named_modules()} == types_before
    assert not hasattr(zoo, STATE_ATTR), "lowbit state goes on the copy only"
    assert fq.fc.weight is not zoo.fc.weight, "the copy owns its parameters"
    calibrated(fq, [batch(1)])
    with torch.no_grad():
        fq.fc.weight.add_(1.0)
    after = zoo.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the float model is unchanged"


def test_prepare_inplace_modifies_the_model_itself(zoo):
    weight = zoo.fc.weight
    fq = prepare(zoo, "w8a8-static", inplace=True)
    assert fq is zoo and type(zoo.fc) is QuantLinear
    assert zoo.fc.weight is weight, "the QAT module adopts the float Parameters"
    assert hasattr(zoo, STATE_ATTR)


def test_a_recipe_selects_only_its_layers(zoo):
    spec = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0))
    recipe = Recipe((Rule(ByName("grouped"), None),
                     Rule(ByType(("Conv2d",)), LayerConfig(weight=spec))), "convs")
    fq = prepare(zoo, recipe)
    assert set(dict(quant_modules(fq))) == {"conv", "pointwise", "depthwise"}
    assert type(fq.grouped) is nn.Conv2d and type(fq.fc) is nn.Linear
    actions = {r.name: r.action for r in lowbit_state(fq).records}
    assert actions["grouped"] == "float", "a None rule keeps the layer float and says so"


def test_prepare_errors(zoo):
    with pytest.raises(ConfigError, match="model.*torch.nn.Module"):
        prepare("not a model", "w8a8")
    with pytest.raises(ConfigError, match="fq_impl='cuda' is invalid.*'reference'"):
        prepare(zoo, "w8a8", fq_impl="cuda")
    with pytest.raises(ConfigError, match="fq_impl='native'.*old name of 'fused'"):
        prepare(zoo, "w8a8", fq_impl="native")
    with pytest.raises(ConfigError, match="recipe.*preset"):
        prepare(zoo, "w9a9")
    fq = prepare(zoo, "w8a8")
    with pytest.raises(StateError, match="already prepared"):
        prepare(fq, "w8a8")
    with pytest.raises(StateError, match="has not been prepared"):
        lowbit_state(zoo)


def test_a_bare_layer_as_the_model_is_refused_with_a_fix():
    """The root object cannot be replaced by its fake-quant twin, so prepare says how to wrap
    it instead of returning a model that silently stays float."""
    layer = nn.Linear(4, 4)
    with pytest.raises(ConfigError, match=r"model.*Linear.*nn.Sequential\(layer\)"):
        prepare(layer, "w8a8-static")
    with pytest.raises(ConfigError, match="model.*Linear"):
        prepare(layer, "w8a8-static", inplace=True)
    assert type(layer) is nn.Linear and not hasattr(layer, STATE_ATTR)


def test_a_layer_shared_under_two_names_stays_one_module():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a
            self.c = nn.Linear(4, 4)

        def forward(self, x):
            return self.c(self.b(self.a(x)))

    torch.manual_seed(0)
    fq = prepare(Shared(), "w8a8-static")
    assert type(fq.a) is QuantLinear and fq.a is fq.b, "both names must see the same QAT module"
    calibrated(fq, [(torch.randn(3, 4),)])
    assert fq.a.act_quantizer.summary()["n_observed"] == 2, "called twice per forward"
    back = to_float(fq)
    assert type(back.a) is nn.Linear and back.a is back.b


# ---------------------------------------------------------------------------- calibrate


def test_calibrate_max_batches_observes_only_the_first_n_forwards(zoo):
    normal = [batch(1), batch(2)]
    huge = batch(3, scale=1e4)
    expected = act_scales(calibrated(prepare(zoo, "w8a8-static"), normal))

    fq = prepare(zoo, "w8a8-static")
    with calibrate(fq, max_batches=2):
        for b in normal:
            fq(*b)
        out = fq(*huge)
    assert torch.equal(out, zoo(*huge)), "forwards after max_batches run float"
    got = act_scales(fq)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got), \
        "the huge batch after max_batches must not widen any range"
    assert set(n_observed(fq).values()) == {2}


def test_recalibrating_with_max_batches_replaces_the_old_ranges(zoo):
    """Regression: quantizers paused after max_batches must still freeze this calibration's
    data, not keep the ranges of an earlier calibration."""
    fq = calibrated(prepare(zoo, "w8a8-static"), [batch(1)])
    old = act_scales(fq)
    big = batch(2, scale=100.0)
    with calibrate(fq, max_batches=1):
        fq(*big)
        fq(*batch(3))
    expected = act_scales(calibrated(prepare(zoo, "w8a8-static"), [big]))
    new = act_scales(fq)
    assert all(torch.equal(new[k], expected[k]) for k in new)
    assert new["conv"] > 10 * old["conv"], "the input range of conv grew with the big batch"


def test_ranges_are_frozen_after_the_block(zoo):
    fq = calibrated(prepare(zoo, "w8a8-static"), [batch(1)])
    frozen = act_scales(fq)
    assert all(m.act_quantizer.state == "frozen" for n, m in quant_modules(fq) if n != "emb")
    huge = batch(4, scale=1e4)
    with torch.no_grad():
        out = fq(*huge)
    assert all(torch.equal(act_scales(fq)[k], frozen[k]) for k in frozen), \
        "forwards after calibration must not move the ranges"
    assert not torch.allclose(out, zoo(*huge)), "the huge input saturates the frozen grid"
    assert lowbit_state(fq).calibrated


def test_calibrate_runs_without_grad(zoo):
    fq = prepare(zoo, "w8a8-static")
    with calibrate(fq):
        out = fq(*batch(1))
    assert not out.requires_grad


def test_start_end_calibration_equal_the_context_manager(zoo):
    data = [batch(1), batch(2)]
    a = calibrated(prepare(zoo, "w8a8-static"), data)
    b = prepare(zoo, "w8a8-static")
    b.start_calibration()
    with torch.no_grad():
        for x in data:
            b(*x)
    b.end_calibration()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    probe = batch(9)
    assert torch.equal(a(*probe), b(*probe))
    assert lowbit_state(b).calibrated


def test_calibrate_rejects_bad_max_batches(zoo):
    fq = prepare(zoo, "w8a8-static")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="max_batches"):
            with calibrate(fq, max_batches=bad):
                pass


def test_an_uncalibrated_static_model_refuses_to_run():
    torch.manual_seed(0)
    fq = prepare(nn.Sequential(nn.Linear(4, 4)), "w8a8-static")
    with pytest.raises(StateError, match="not calibrated"):
        fq(torch.randn(2, 4))


def test_records_hold_calibration_metrics(zoo):
    fq = calibrated(prepare(zoo, "w8a8-static"), [batch(1)])
    rec = lowbit_state(fq).record("fc")
    assert 0.0 <= rec.metrics["act_sat_ratio"] <= 1.0
    assert 0.0 <= rec.metrics["weight_sat_ratio"] <= 1.0


# ---------------------------------------------------------------------------- to_float


def test_to_float_round_trip_restores_float_modules_and_outputs(zoo):
    probe = batch(5)
    fq = calibrated(prepare(zoo, "w8a8-static"), [batch(1)])
    assert not torch.equal(fq(*probe), zoo(*probe)), "fake quantization changes the output"
    back = to_float(fq)
    assert back is fq, "to_float works in place"
    assert {n: type(m) for n, m in back.named_modules()} == \
        {n: type(m) for n, m in zoo.named_modules()}
    assert not any(isinstance(m, TensorQuantizer) for m in back.modules())
    assert not hasattr(back, STATE_ATTR) and not hasattr(back, "start_calibration")
    assert torch.equal(back(*probe), zoo(*probe))
    fq2 = prepare(back, "w8a8")  # a float model again: it can be prepared anew
    assert type(fq2.fc) is QuantLinear


def test_to_float_after_inplace_prepare_gives_back_the_same_parameters(zoo):
    params = dict(zoo.named_parameters())
    to_float(prepare(zoo, "w8a8-static", inplace=True))
    assert all(p is params[n] for n, p in zoo.named_parameters())


def test_to_float_errors(zoo):
    with pytest.raises(StateError, match="has not been prepared"):
        to_float(zoo)
    from lowbit.model.convert import convert
    q = convert(calibrated(prepare(zoo, "w8a8-static"), [batch(1)]))
    with pytest.raises(StateError, match="converted model holds integer weights"):
        to_float(q)
    with pytest.raises(StateError, match="already converted"):
        q.start_calibration()


def test_fused_fq_impl_equals_reference_for_int8_presets(zoo):
    data, probe = [batch(1), batch(2)], batch(7)
    for preset in ("w8a8", "w8a8-static", "w8a16"):
        ref = calibrated(prepare(zoo, preset), data)
        nat = calibrated(prepare(zoo, preset, fq_impl="fused"), data)
        assert lowbit_state(nat).fq_impl == "fused"
        assert torch.equal(ref(*probe), nat(*probe)), preset


def test_weight_only_spec_per_tensor_act_spec_on_a_linear():
    torch.manual_seed(0)
    act = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor())
    recipe = Recipe((Rule(ByType(("Linear",)), LayerConfig(weight=None, act=act)),), "act-only")
    fq = calibrated(prepare(nn.Sequential(nn.Linear(4, 4)), recipe), [(torch.randn(3, 4),)])
    assert fq[0].weight_quantizer is None and fq[0].act_quantizer.state == "frozen"
