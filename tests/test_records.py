"""LayerRecord: what happened to one layer, serialized for reports."""

from __future__ import annotations

import json

import pytest

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.records import ACTIONS, LayerRecord


def _full_record() -> LayerRecord:
    return LayerRecord(name="encoder.layers.0.fc1", module_type="Linear", action="fallback",
                       reason="int4 kernel needs K % 128 == 0; used the reference kernel",
                       config=LayerConfig(weight=QuantSpec(qtype="int4")).to_dict(),
                       fq_impl="fused", fq_fallback="weight: no fused op for per_group",
                       kernel_path="reference", kernel="int4_weight_only", kernel_reason="K=100",
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
    assert set(data) == {"name", "module_type", "action", "reason", "config", "fq_impl",
                         "fq_fallback", "kernel_path", "kernel", "kernel_reason", "metrics"}


def test_to_dict_copies_so_the_record_is_not_aliased():
    record = _full_record()
    data = record.to_dict()
    data["metrics"]["sqnr_db"] = 0.0
    assert record.metrics["sqnr_db"] == 31.5


def test_defaults_and_actions():
    record = LayerRecord("fc", "Linear", "quantized")
    assert (record.reason, record.config, record.fq_impl, record.kernel_path, record.metrics) \
        == ("", None, None, None, {})
    other = LayerRecord("a", "Linear", "quantized")
    assert other.metrics is not record.metrics, "no shared mutable default"
    assert set(ACTIONS) == {"quantized", "float", "skipped", "fallback"}


def test_an_unknown_action_is_a_config_error():
    # records are also built from user-supplied JSON (LayerRecord.from_dict): a LowbitError
    with pytest.raises(ConfigError, match="LayerRecord.action='done' is invalid"):
        LayerRecord("fc", "Linear", "done")


# ------------------------------------------------------------- records written before the split


def test_an_old_prepared_record_splits_into_fq_impl_and_its_fallback_reason():
    """Before the split, prepare wrote the fake-quant choice into ``backend`` and a fused
    fallback reason into ``kernel_reason``."""
    old = {"name": "fc", "module_type": "Linear", "action": "quantized", "reason": "",
           "config": None, "backend": "native", "kernel": None,
           "kernel_reason": "native backend has no fused fake-quant kernel for per_group",
           "metrics": {}}
    record = LayerRecord.from_dict(old)
    assert (record.fq_impl, record.kernel_path, record.kernel_reason) == ("fused", None, None)
    assert "per_group" in record.fq_fallback


def test_an_old_converted_record_keeps_its_kernel_as_kernel_path():
    """After convert, ``backend`` held the kernel's path(s) and ``kernel`` was set."""
    old = {"name": "fc", "module_type": "Linear", "action": "quantized", "reason": "",
           "config": None, "backend": "native+dense", "kernel": "aten._int_mm rows 1-31",
           "kernel_reason": "table", "metrics": {}}
    record = LayerRecord.from_dict(old)
    assert (record.kernel_path, record.kernel, record.kernel_reason, record.fq_impl) == \
        ("integer+dense", "aten._int_mm rows 1-31", "table", None)


def test_the_committed_pre_split_records_json_loads():
    import pathlib
    path = pathlib.Path(__file__).parent / "fixtures" / "pre_split" / "records.json"
    records = [LayerRecord.from_dict(r) for r in json.loads(path.read_text())]
    assert [r.name for r in records] == ["0", "2"]
    assert all(r.fq_impl is None and r.kernel_path == "dense" and r.kernel for r in records)
