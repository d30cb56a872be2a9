"""Static activation ranges are calibrated block by block through the runner when
algorithms run: each block's ranges come from the inputs the runner gives it."""

import pytest
import torch

import lowbit

from .toy import Toy, batches

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread is faster

BLOCK_LAYERS = [f"layers.{i}.{n}" for i in range(3) for n in ("up", "down")]


def _act_scales(model):
    return {name: m.act_quantizer.scale.clone() for name, m in lowbit.model.quant_modules(model)}


def test_float_fed_blocks_get_the_float_passes_ranges_and_quantized_fed_ones_differ():
    model, data = Toy(), batches(3)
    plain, _ = lowbit.quantize_model(model, "w8a8-static", data, convert=False)
    float_fed, records = lowbit.quantize_model(model, "w8a8-static", data, convert=False,
                                               algorithms=["gptq"], sequential=False)
    ref, got = _act_scales(plain), _act_scales(float_fed)
    for name in BLOCK_LAYERS:  # the runner fed them the float model's block inputs
        assert torch.equal(got[name], ref[name]), name
    assert set(got) == set(ref) and lowbit.lowbit_state(float_fed).calibrated
    assert "act_sat_ratio" in {r.name: r for r in records}["layers.2.down"].metrics

    seq, _ = lowbit.quantize_model(model, "w8a8-static", data, convert=False,
                                   algorithms=["gptq"])
    got = _act_scales(seq)
    assert torch.equal(got["layers.0.up"], ref["layers.0.up"]), "block 0 sees the float input"
    assert any(not torch.equal(got[n], ref[n]) for n in BLOCK_LAYERS[2:]), \
        "later blocks see the quantized blocks' outputs"
    assert not torch.equal(got["head"], ref["head"]), "the head: one pass after the blocks"
    with torch.no_grad():
        x, mask = data[0]
        assert torch.isfinite(seq(x, mask=mask)).all()
