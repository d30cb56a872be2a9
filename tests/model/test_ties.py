"""Tied weights (an embedding and an LM head sharing one Parameter) are quantized once, in
one format, stored once in a checkpoint and loaded back shared; outputs equal the path where
the two layers hold equal but separate weights."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open
from torch import nn

import lowbit
from lowbit.model.select import select_layers
from lowbit.model.ties import tied_groups
from lowbit.nn.quantized import set_kernel_path


class TiedLM(nn.Module):
    """Embedding [V, D] + a mid layer + a linear head whose weight IS the embedding table."""

    def __init__(self, tie: bool = True, vocab: int = 50, width: int = 40):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, width)
        self.mid = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tie:
            self.head.weight = self.emb.weight
        else:
            self.head.weight = nn.Parameter(self.emb.weight.detach().clone())

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


def _ids(seed):
    return torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(seed))


def test_ties_are_found_from_parameter_identity():
    assert tied_groups(TiedLM()) == [["emb", "head"]]
    assert tied_groups(TiedLM(tie=False)) == []


def test_one_weight_spec_the_stricter_is_recorded_in_both_records():
    """w4a16-g128 asks int8 for the embedding and int4 for the head: both get int8."""
    configs, records = select_layers(TiedLM(), "w4a16-g128")
    assert configs["emb"].weight == configs["head"].weight
    assert configs["head"].weight.qtype.bits == 8 and configs["mid"].weight.qtype.bits == 4
    recs = {r.name: r for r in records}
    assert recs["emb"].metrics["tied_with"] == ["head"]
    assert recs["head"].metrics["tied_with"] == ["emb"]
    for name in ("emb", "head"):
        assert "quantized once as int8" in recs[name].reason and "emb's" in recs[name].reason
    assert recs["head"].config["weight"]["qtype"] == "int8"
    untied = select_layers(TiedLM(tie=False), "w4a16-g128")[0]
    assert untied["head"].weight.qtype.bits == 4, "untied layers keep their own rule's spec"


def _quantized(tie):
    model = TiedLM(tie).eval()
    q, _ = lowbit.quantize_model(model, "w4a16-g128", [_ids(1)])
    set_kernel_path(q, "reference")
    return q


def test_converted_tied_layers_hold_one_tensor_and_match_the_untied_path():
    tied, untied = _quantized(True), _quantized(False)
    assert tied.emb.qdata is tied.head.qdata and tied.emb.scale is tied.head.scale
    assert tied.emb.zero_point is tied.head.zero_point
    # the untied twin, forced to the same spec, quantizes the equal weight the same way
    recipe = lowbit.Recipe((lowbit.Rule(lowbit.ByName("head"),
                                        lowbit.preset("w4a16-g128").rules[1].config),)
                           + tuple(lowbit.preset("w4a16-g128").rules), "untied-int8-head")
    untied, _ = lowbit.quantize_model(TiedLM(tie=False).eval(), recipe, [_ids(1)])
    set_kernel_path(untied, "reference")
    assert torch.equal(untied.head.qdata, tied.head.qdata)
    with torch.no_grad():
        assert torch.equal(tied(_ids(2)), untied(_ids(2)))


def test_checkpoint_stores_the_tied_codes_once_and_loads_them_shared(tmp_path):
    q = _quantized(True)
    path = lowbit.save(q, tmp_path / "ckpt")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["tied"] == {"head.qdata": "emb.qdata", "head.scale": "emb.scale",
                                "head.zero_point": "emb.zero_point"}
    with safe_open(str(path / manifest["weights_file"]), "pt") as f:
        keys = set(f.keys())
    assert "emb.qdata" in keys and "head.qdata" not in keys, "one stored copy"
    back = lowbit.load(path, TiedLM(tie=True))
    assert back.emb.qdata is back.head.qdata and back.emb.scale is back.head.scale
    set_kernel_path(back, "reference")
    with torch.no_grad():
        assert torch.equal(back(_ids(3)), q(_ids(3)))


def test_fake_quant_tied_layers_share_one_quantizer_through_a_checkpoint(tmp_path):
    model = TiedLM().eval()
    fq = lowbit.prepare(model, "w4a16-g128")
    with lowbit.calibrate(fq):
        fq(_ids(1))
    assert fq.emb.weight_quantizer is fq.head.weight_quantizer
    path = lowbit.save(fq, tmp_path / "fq")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["tied"]["head.weight"] == "emb.weight", "the float table stored once"
    back = lowbit.load(path, TiedLM())
    assert back.emb.weight_quantizer is back.head.weight_quantizer
    assert back.emb.weight is back.head.weight
    with torch.no_grad():
        assert torch.equal(back(_ids(4)), fq(_ids(4)))


def test_a_float_member_keeps_the_float_weight_and_the_record_says_so():
    recipe = lowbit.Recipe((lowbit.Rule(lowbit.ByName("head"), None),)
                           + tuple(lowbit.preset("w4a16-g128").rules), "head-float")
    q, records = lowbit.quantize_model(TiedLM().eval(), recipe, [_ids(1)])
    emb = next(r for r in records if r.name == "emb")
    assert "used by head, which stays float" in emb.reason
    assert isinstance(q.head, nn.Linear) and q.head.weight.dtype == torch.float32
