"""lowbit.quantize_model: the plain path without algorithms, the layer-wise path with them."""

import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError
from lowbit.model.api import quantize_model as plain_quantize_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from algorithms.toy import Toy, batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_without_algorithms_it_is_the_plain_flow():
    data = batches(2)
    a, _ = lowbit.quantize_model(Toy(), "w8a16", data)
    b, _ = plain_quantize_model(Toy(), "w8a16", data)
    x, mask = data[0]
    with torch.no_grad():
        assert torch.equal(a(x, mask=mask), b(x, mask=mask))


def test_static_activation_ranges_are_calibrated_before_the_algorithms():
    fake, records = lowbit.quantize_model(Toy(), "w8a8-static", batches(2), convert=False,
                                          algorithms=["gptq"])
    assert fake.layers[0].up.act_quantizer.is_frozen
    assert all("gptq_output_mse" in r.metrics for r in records if r.name.startswith("layers."))
    assert "weights by gptq" in next(r for r in records if r.name == "layers.0.up").reason


def test_float_replay_and_bfloat16_inputs_also_work():
    fake, records = lowbit.quantize_model(Toy(), "w8a16", batches(2), algorithms=["gptq"],
                                          sequential=False, act_dtype=torch.bfloat16)
    assert sum("gptq_output_mse" in r.metrics for r in records) == 6


def test_algorithms_need_batches_not_a_forward_loop_and_known_names():
    with pytest.raises(ConfigError, match="forward loop"):
        lowbit.quantize_model(Toy(), "w8a16", lambda m: None, algorithms=["gptq"])
    with pytest.raises(ConfigError, match="empty iterable"):
        lowbit.quantize_model(Toy(), "w8a16", [], algorithms=["gptq"])
    with pytest.raises(ConfigError, match="algorithm='gtpq'"):
        lowbit.quantize_model(Toy(), "w8a16", batches(1), algorithms=["gtpq"])
