"""Candidates, the layers they select, tied/pattern groups, and layer costs that equal the
bytes a real converted layer stores."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.config import LayerConfig, weight_spec
from lowbit.errors import ConfigError
from lowbit.search.candidates import (FLOAT, float_bytes, layer_configs, layer_groups,
                                      parse_candidates, stored_bytes)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 128)
        self.mid = nn.Linear(128, 128)
        self.out = nn.Linear(128, 50, bias=False)
        self.out.weight = self.emb.weight  # tied

    def forward(self, ids):
        return self.out(self.mid(self.emb(ids)))


def test_parse_candidates_names_and_float():
    cands = parse_candidates(["float", "w8a16", LayerConfig(weight_spec(lowbit.int4))])
    assert [c.name for c in cands] == [FLOAT, "w8a16", "config2"]
    assert cands[0].recipe is None and cands[1].recipe.name == "w8a16"
    assert [c.name for c in parse_candidates("w8a16, w4a16-g128")] == ["w8a16", "w4a16-g128"]
    named = parse_candidates({"small": "w4a16-g128", "big": "w8a16"})
    assert [c.name for c in named] == ["small", "big"]


@pytest.mark.parametrize("bad, match", [([], "non-empty"), (["w8a16", "w8a16"], "distinct"),
                                        (["no-such-preset"], "preset")])
def test_bad_candidates_are_rejected(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_candidates(bad)


def test_layer_configs_follow_each_candidates_first_matching_rule():
    model = Tied()
    cands = parse_candidates(["w4a16-g128", "w8a16"])
    configs = layer_configs(model, cands, torch.randint(0, 50, (2, 3)))
    assert list(configs) == ["emb", "mid", "out"]
    # the w4 preset keeps Embedding at int8 weight-only, as the preset says
    assert configs["emb"]["w4a16-g128"].weight.qtype == lowbit.int8
    assert configs["mid"]["w4a16-g128"].weight.qtype == lowbit.int4


def test_groups_join_tied_weights_and_patterns():
    model = Tied()
    names = ["emb", "mid", "out"]
    assert layer_groups(model, names) == [["emb", "out"], ["mid"]]
    assert layer_groups(model, names, [["mid", "emb"]]) == [["emb", "mid", "out"]]
    with pytest.raises(ConfigError, match="groups"):
        layer_groups(model, names, [["nothing*"]])


@pytest.mark.parametrize("preset", ["w8a16", "w4a16-g128"])
def test_stored_bytes_equal_the_converted_layers_bytes(preset):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 256))
    x = torch.randn(4, 256)
    real, records = lowbit.quantize_model(model, preset, [x])
    configs = layer_configs(model, parse_candidates([preset]), x)
    for record in records:
        if record.action == "quantized":
            config = configs[record.name][preset]
            assert stored_bytes(model.get_submodule(record.name), config) \
                == record.metrics["weight_bytes"]
    assert stored_bytes(model[0], None) == float_bytes(model[0]) == (256 * 64 + 64) * 4
