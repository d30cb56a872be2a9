"""LayerRecord: what happened to one layer, serialized for reports."""

from __future__ import annotations

import json

import pytest

from lowbit.config import LayerConfig, QuantSpec
from lowbit.records import ACTIONS, LayerRecord


def _full_record() -> LayerRecord:
    return LayerRecord(name="encoder.layers.0.fc1", module_type="Linear", action="fallback",
                       reason="int4 kernel needs K % 128 == 0; used the reference kernel",
                       config=LayerConfig(weight=QuantSpec(qtype="int4")).to_dict(),
                       backend="reference", kernel="int4_weight_only", kernel_reason="K=100",
                       metrics={"sqnr_db": 31.5, "sat_ratio": 0.001, "mse": 1e-5})


@pytest.mark.parametrize("record", [
    _full_record(),
    LayerRecord(name="head", module_type="Linear", action="float", reason="kept float by recipe"),
    LayerRecord(name="", module_type="Conv2d", action="skipped"),
], ids=["full", "float", "minimal"])
def test_record_round_trips_through_json(record):
    data = record.to_dict()
    back = LayerRecord.from_dict(json.loads(json.dumps(data)))
    assert back == record
    assert set(data) == {"name", "module_type", "action", "reason", "config", "backend", "kernel",
                         "kernel_reason", "metrics"}


def test_to_dict_copies_so_the_record_is_not_aliased():
    record = _full_record()
    data = record.to_dict()
    data["metrics"]["sqnr_db"] = 0.0
    assert record.metrics["sqnr_db"] == 31.5


def test_defaults_and_actions():
    record = LayerRecord("fc", "Linear", "quantized")
    assert (record.reason, record.config, record.backend, record.metrics) == ("", None, None, {})
    other = LayerRecord("a", "Linear", "quantized")
    assert other.metrics is not record.metrics, "no shared mutable default"
    assert set(ACTIONS) == {"quantized", "float", "skipped", "fallback"}


def test_an_unknown_action_is_an_internal_error():
    # records are built by lowbit itself, so a bad action is a bug guarded by an assert
    with pytest.raises(AssertionError, match="LayerRecord.action 'done' not in"):
        LayerRecord("fc", "Linear", "done")
