"""analyze(): its numbers agree with the library's own flow, and it is JSON-able."""

import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.model import calibrate, convert, estimate_model_size, prepare
from lowbit.errors import ConfigError
from lowbit.report.analysis import Analysis, analyze
from lowbit.search.scoring import Scorer

W4A4 = lowbit.recipe_from_flags(quantize_all=True, quant_bits=4)


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    gen = torch.Generator().manual_seed(1)
    return model, [torch.randn(8, 16, generator=gen) for _ in range(2)]


@pytest.fixture(scope="module")
def analysed():
    model, batches = model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = analyze(model, W4A4, batches, n_probes=2)
    return model, batches, before, a


def test_numbers_agree_with_the_flow(analysed):
    model, batches, before, a = analysed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    q = prepare(model, W4A4, example_inputs=batches[0])
    with calibrate(q):
        for b in batches:
            q(b)
    scorer = Scorer(model, batches)
    assert a.float_metric == pytest.approx(scorer.float_metric)
    assert a.quantized_metric == pytest.approx(scorer.metric(q))
    assert a.model["quantized_bytes"] == estimate_model_size(convert(q))["quantized_bytes"]
    assert [l["name"] for l in a.layers] == ["0", "2", "4"]
    alone = {l["name"]: l["sensitivity"]["quantize_only"] for l in a.layers}
    assert a.worst_layer() == max(alone, key=alone.get)
    ranks = sorted(l["sensitivity"]["hessian_rank"] for l in a.layers)
    assert ranks == [1, 2, 3]
    for key in ("quantize_only", "float_only", "hessian", "layer_stats"):
        assert a.seconds[key] >= 0.0
    assert a.hessian["loss"] == "output MSE to float"


def test_histograms_cover_the_observed_and_clip_ranges(analysed):
    _, _, _, a = analysed
    for l in a.layers:
        h = l["histogram"]
        lo = min(l["observed_range"][0], l["clip_range"][0])
        hi = max(l["observed_range"][1], l["clip_range"][1])
        assert (h["lo"], h["hi"]) == pytest.approx((lo, hi))
        assert sum(h["counts"]) > 0


def test_json_round_trip(analysed, tmp_path):
    _, _, _, a = analysed
    path = a.save_json(tmp_path / "a.json")
    back = Analysis.load_json(path)
    assert back.worst_layer() == a.worst_layer()
    assert back.layers[0]["name"] == "0" and back.recipe == a.recipe


def test_options_switch_parts_off_and_eval_fn_is_used():
    model, batches = model_and_data()
    a = analyze(model, W4A4, batches, eval_fn=lambda m: 1.0, metric_name="const",
                sweeps=False, hessian=False)
    assert a.metric_name == "const" and a.quantized_metric == 1.0
    assert all(l["sensitivity"] == {} for l in a.layers)
    assert "hessian" not in a.seconds and "quantize_only" not in a.seconds
    assert all(item["rule"] != "sensitive" for item in a.advice)  # needs the sweeps


def test_digits_cnn_names_a_worst_layer(single_thread):
    pytest.importorskip("sklearn")
    from lowbit.zoo.digits import accuracy, calibration_batches, train_digits_cnn

    model, data, _ = train_digits_cnn()
    batches = list(calibration_batches(data, 2, 64))
    a = analyze(model, W4A4, batches, lambda m: accuracy(m, data.x_test, data.y_test),
                metric_name="accuracy", n_probes=1)
    names = [l["name"] for l in a.layers]
    assert names == ["proj", "blocks.0.conv", "blocks.0.pw", "blocks.1.conv", "blocks.1.pw",
                     "head"]
    assert a.worst_layer() in names
    assert all(not math.isnan(l["sensitivity"]["hessian_trace"]) for l in a.layers)
    for item in a.advice:
        assert set(item["layers"]) <= set(names) and item["evidence"]


def test_worst_layer_breaks_ties_by_float_only_recovery_then_order():
    def row(name, alone, rec):
        return {"name": name, "sensitivity": {"quantize_only": alone, "float_only": rec}}

    a = Analysis({}, "acc", True, 1.0, 0.9, {}, [row("a", 1.78, 0.4), row("b", 1.78, 0.9),
                                                 row("head", 1.78, 0.9), row("c", 0.2, 2.0)],
                 [], {})
    assert a.worst_layer() == "b"          # tie on quantize_only: larger recovery, then earlier
    assert a.worst_layer("float_only") == "c"


def test_sweeps_can_use_fidelity_on_a_few_batches_instead_of_eval_fn():
    model, batches = model_and_data()
    calls = []

    def metric(m):
        calls.append(1)
        return 1.0

    a = analyze(model, W4A4, batches, eval_fn=metric, metric_name="const", hessian=False,
                sweep_batches=1)
    assert len(calls) == 2  # float and quantized headline metrics only
    assert a.sweep == {"metric_name": "cosine_to_float", "uses_eval_fn": False, "batches": 1}
    assert a.sweep_metric_name == "cosine_to_float"
    assert any(l["sensitivity"]["quantize_only"] > 0 for l in a.layers)
    full = analyze(model, W4A4, batches, eval_fn=metric, metric_name="const", hessian=False)
    assert full.sweep["uses_eval_fn"] and len(calls) > 2 + 2 * len(a.layers)
    with pytest.raises(ConfigError, match="sweep_batches"):
        analyze(model, W4A4, batches, sweep_batches=0)
