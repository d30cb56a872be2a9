"""Each advice rule fires on the numbers it names and stays quiet below its threshold."""

from lowbit.report.advice import (CLIP_GAIN_DB, GRANULARITY_GAIN_DB, SATURATION, SPREAD_SHARE,
                                  SENSITIVE_SHARE, advise)


def layer(name, alone=0.1, **kw):
    base = {"name": name, "sensitivity": {"quantize_only": alone, "float_only": alone},
            "act_method": "minmax", "act_sample_sqnr_db": 20.0, "clip_alternatives": {},
            "act_sat_ratio": 0.0, "observed_range": [-1.0, 1.0], "act_scheme": None,
            "weight_sqnr_db": 30.0, "weight_sqnr_per_channel_db": None}
    base.update(kw)
    return base


def rules(items, rule):
    return [a["layer"] for a in items if a["rule"] == rule]


def test_sensitive_names_the_dominant_layer_with_its_evidence():
    items = advise([layer("a", 0.1), layer("head", 0.8), layer("c", 0.1)], "accuracy")
    assert rules(items, "sensitive") == ["head"]
    item = next(a for a in items if a["rule"] == "sensitive")
    assert item["evidence"]["share"] == 0.8 and "keep it float or at 8 bits" in item["message"]
    even = advise([layer(str(i), 0.1) for i in range(int(1 / SENSITIVE_SHARE) + 1)], "acc")
    assert rules(even, "sensitive") == []


def test_clip_saturation_granularity_and_unsigned():
    items = advise([
        layer("clip", clip_alternatives={"mse": 20.0 + CLIP_GAIN_DB + 0.5}),
        layer("close", clip_alternatives={"mse": 20.0 + CLIP_GAIN_DB - 0.5}),
        layer("sat", act_sat_ratio=SATURATION * 2),
        layer("gran", weight_sqnr_per_channel_db=30.0 + GRANULARITY_GAIN_DB + 1),
        layer("relu", observed_range=[0.0, 3.0], act_scheme=["symmetric", True]),
        layer("relu_affine", observed_range=[0.0, 3.0], act_scheme=["affine", True]),
    ], "m")
    assert rules(items, "clip") == ["clip"]
    assert "use mse" in next(a for a in items if a["rule"] == "clip")["message"]
    assert rules(items, "saturation") == ["sat"]
    assert rules(items, "granularity") == ["gran"]
    assert rules(items, "unsigned") == ["relu"]


def test_one_fix_on_several_layers_is_one_item_with_each_layers_evidence():
    relu = dict(observed_range=[0.0, 3.0], act_scheme=["symmetric", True])
    items = advise([layer("a", **relu), layer("b", **relu), layer("c")], "m")
    unsigned = [a for a in items if a["rule"] == "unsigned"]
    assert len(unsigned) == 1
    assert unsigned[0]["layer"] == "a, b" and unsigned[0]["layers"] == ["a", "b"]
    assert set(unsigned[0]["evidence"]) == {"a", "b"}
    assert unsigned[0]["message"].startswith("2 layers (a, b): inputs are never negative")


def test_spread_says_no_single_layer_recovers_half():
    spread = advise([layer("a", 0.3), layer("b", 0.3), layer("c", 0.4)], "accuracy")
    item = next(a for a in spread if a["rule"] == "spread")
    assert "40% of their sum" in item["message"] and "lowbit search" in item["message"]
    assert item["evidence"]["shares"]["c"] == 0.4 / 1.0
    assert item["evidence"]["largest_float_only_recovery"] == 0.4
    assert rules(spread, "sensitive") == []  # a one-layer fix would recover too little
    dominant = advise([layer("a", 0.2), layer("b", SPREAD_SHARE + 0.3)], "accuracy")
    assert rules(dominant, "spread") == []
    assert rules(advise([layer("only", 0.5)], "accuracy"), "spread") == []
