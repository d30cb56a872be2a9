"""lowbit.report.comparison: float vs fake-quant vs real rows, peak memory, JSON, error paths."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError, InputError
from lowbit.model import convert, estimate_model_size, quantize_model
from lowbit.report import ComparisonResult, compare

IN, HIDDEN, OUT, BATCH = 256, 64, 16, 8


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT)).eval()


def _data(n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, IN, generator=g) for _ in range(n)]


def _checksum(model: nn.Module) -> float:
    """A deterministic 'task metric': the sum of the outputs on a fixed batch."""
    with torch.inference_mode():
        return float(model(_data(1)[0]).sum())


@pytest.fixture(scope="module")
def models():
    model = _toy()
    fake, _ = quantize_model(model, "w8a8-static", _data(), convert=False)
    return model, fake, convert(fake)


@pytest.fixture(scope="module")
def result(models):
    model, fake, real = models
    return compare(model, {"fake-quant": fake, "int8": real}, _data(), _checksum, warmup=1,
                   repeats=2, reference_name="float")


class Doubler(nn.Module):
    """Allocates exactly two (BATCH, IN) float tensors at once: ``x * 2`` then ``+ 1``."""

    def forward(self, x):
        return x * 2 + 1


class Scratch(nn.Module):
    """Allocates a 64x larger temporary and frees it before returning a small output."""

    def forward(self, x):
        return x.repeat(64, 1).sum(0)


def test_rows_are_reference_first_then_candidates_in_order(result):
    assert result.names == ["float", "fake-quant", "int8"], "the reference row comes first"
    assert result.reference == "float"


def test_reference_row_has_no_error_against_a_second_run(result):
    ref = result["float"]
    assert ref.mse == 0.0 and ref.max_abs_error == 0.0, "a deterministic model matches itself"
    assert ref.cosine == pytest.approx(1.0, abs=1e-12)
    assert ref.compression == 1.0


def test_candidates_are_close_to_float_but_not_equal(result):
    for name in ("fake-quant", "int8"):
        row = result[name]
        assert 0.99 < row.cosine < 1.0, f"{name}: int8 rounding moves outputs a little"
        assert row.mse > 0.0 and row.max_abs_error > 0.0


def test_storage_bytes_are_what_each_model_stores(models, result):
    model, fake, real = models
    for name, m in (("float", model), ("fake-quant", fake), ("int8", real)):
        assert result[name].storage_bytes == estimate_model_size(m)["quantized_bytes"]
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert result["float"].storage_bytes == float_bytes
    ratio = result["int8"].compression
    assert 3.5 < ratio <= 4.0, f"int8 codes are 4x smaller than fp32 up to scales/bias: {ratio}"
    assert ratio == pytest.approx(float_bytes / result["int8"].storage_bytes)
    assert result["fake-quant"].compression <= 1.0, "fake quant still stores float weights"


def test_metric_column_holds_each_models_score(models, result):
    model, fake, real = models
    assert result.metric_name == "_checksum"
    for name, m in (("float", model), ("fake-quant", fake), ("int8", real)):
        assert result[name].metric == pytest.approx(_checksum(m), rel=1e-6)
    assert "_checksum" in result.table().splitlines()[0]


def test_timings_are_positive_and_settings_say_how_they_were_taken(result):
    for row in result.rows:
        assert row.latency_ms > 0 and row.throughput > 0
    s = result.settings
    assert (s["warmup"], s["repeats"], s["batches"], s["samples"]) == (1, 2, 2, 2 * BATCH)
    assert "profiler" in s["peak_memory_method"], "the CPU method names its source"


def test_without_metric_there_is_no_metric_column(models):
    model, _, real = models
    r = compare(model, [real], _data(1), warmup=0, repeats=1)
    assert r.metric_name is None and r.rows[1].metric is None
    assert r.names == ["reference", "0:Sequential"], "list candidates are named index:type"
    assert r.table().splitlines()[0].split()[:2] == ["model", "storage"]
    assert "metric" not in r.table()


def test_peak_memory_counts_the_tensors_alive_at_once():
    x = torch.randn(BATCH, IN)
    r = compare(Doubler(), [], [x], warmup=0, repeats=1)
    two = 2 * x.numel() * x.element_size()
    assert two <= r.rows[0].peak_memory_bytes <= two + 64, \
        "x*2 and its +1 are alive together; a few bytes for the wrapped scalars"


def test_peak_memory_includes_freed_temporaries():
    x = torch.randn(BATCH, IN)
    r = compare(Scratch(), [], [x], warmup=0, repeats=1)
    temporary = 64 * x.numel() * x.element_size()
    assert r.rows[0].peak_memory_bytes >= temporary, "the repeat() temporary is the peak"


def test_models_are_not_modified(models):
    model, fake, real = models
    before = {k: v.clone() for k, v in real.state_dict().items()}
    model.train()
    try:
        compare(model, {"int8": real}, _data(1), warmup=0, repeats=1)
        assert model.training, "compare leaves the mode as it found it"
    finally:
        model.eval()
    after = real.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nondeterministic_reference_shows_error_and_a_warning(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, OUT), nn.Dropout(0.5)).train()
    with caplog.at_level(logging.WARNING, logger="lowbit.report.comparison"):
        r = compare(model, [], _data(1), warmup=0, repeats=1)
    assert r.rows[0].mse > 0.0, "dropout makes a second run differ from the first"
    assert "training mode" in caplog.text


def test_dict_batches_tuple_outputs_and_complex_outputs():
    class KwargsModel(nn.Module):
        def forward(self, ids, scale):
            return (ids.float() * scale, "extra")

    class ComplexModel(nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def forward(self, x):
            return {"out": torch.complex(x, x + self.shift)}

    batch = {"ids": torch.arange(12).reshape(3, 4), "scale": torch.tensor(2.0)}
    r = compare(KwargsModel(), [KwargsModel()], [batch], warmup=0, repeats=1)
    assert r.settings["samples"] == 3, "samples come from the first tensor's dim 0"
    assert r.rows[1].mse == 0.0
    x = torch.randn(4, 5)
    r = compare(ComplexModel(0.0), {"shifted": ComplexModel(0.5)}, [x], warmup=0, repeats=1)
    assert r["shifted"].mse == pytest.approx(0.25, rel=1e-6), "|0.5i|^2 on every element"


def test_json_round_trip_and_markdown(result, tmp_path):
    path = result.save_json(tmp_path / "deep" / "compare.json")
    loaded = ComparisonResult.load_json(path)
    assert loaded.to_dict() == result.to_dict()
    assert loaded["int8"] == result["int8"]
    md = result.to_markdown()
    assert md.splitlines()[0].startswith("| model | storage |")
    assert all(f"| {name} |" in md for name in result.names)


def test_out_json_writes_the_file(models, tmp_path):
    model, _, real = models
    r = compare(model, {"int8": real}, _data(1), warmup=0, repeats=1,
                out_json=tmp_path / "c.json")
    assert ComparisonResult.load_json(tmp_path / "c.json").to_dict() == r.to_dict()


def test_unknown_row_is_a_key_error(result):
    with pytest.raises(KeyError, match="no model called 'int4'"):
        result["int4"]


def test_from_dict_rejects_other_data():
    with pytest.raises(InputError, match="not a lowbit comparison"):
        ComparisonResult.from_dict({"rows": [{"name": "x"}]})


@pytest.mark.parametrize("data, match", [
    ([], "data is empty"),
    (torch.randn(2, IN), "must be a list of batches"),
    ([[None]], "no tensor with a batch dimension"),
])
def test_bad_data_is_an_input_error(data, match):
    with pytest.raises(InputError, match=match):
        compare(_toy(), [], data, warmup=0, repeats=1)


def test_mismatched_output_shapes_are_an_input_error():
    other = nn.Linear(IN, OUT + 1)
    with pytest.raises(InputError, match=r"'bad' output of batch 0 has shape \(8, 17\)"):
        compare(_toy(), {"bad": other}, _data(1), warmup=0, repeats=1)


def test_model_without_tensor_output_is_an_input_error():
    class Words(nn.Module):
        def forward(self, x):
            return "no tensor"

    with pytest.raises(InputError, match="'words' returned no tensor"):
        compare(_toy(), {"words": Words()}, _data(1), warmup=0, repeats=1)


@pytest.mark.parametrize("kwargs, match", [
    ({"candidates": "int8"}, "candidates='str' is invalid: allowed a dict"),
    ({"candidates": {"x": {"weight": 1}}}, r"model 'x'.*torch.nn.Module"),
    ({"candidates": {"reference": nn.Identity()}}, "names other than the reference"),
    ({"repeats": 0}, "repeats=0 is invalid"),
    ({"warmup": -1}, "warmup=-1 is invalid"),
    ({"metric": 3}, "metric='int' is invalid"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    args = {"candidates": [], "warmup": 0, "repeats": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        compare(_toy(), args.pop("candidates"), _data(1), **args)


def test_metric_must_return_a_number():
    with pytest.raises(InputError, match="must return a number"):
        compare(_toy(), [], _data(1), lambda m: "good", warmup=0, repeats=1)


def test_peak_memory_is_none_when_the_profiler_reports_no_allocations(monkeypatch):
    class NoEvents:
        """A profiler without kineto results, as in a build without kineto."""

        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.autograd.profiler, "profile", NoEvents)
    r = compare(Doubler(), [], [torch.randn(2, 3)], warmup=0, repeats=1)
    assert r.rows[0].peak_memory_bytes is None
    assert "not measured" in r.settings["peak_memory_method"]
    assert "n/a" in r.table().splitlines()[2], "the table shows a missing peak as n/a"


def test_a_model_still_calibrating_is_refused(models):
    from lowbit.errors import StateError
    from lowbit.model import prepare

    model = models[0]
    observing = prepare(model, "w8a8-static")
    observing.start_calibration()
    with pytest.raises(StateError, match="'observing' is still calibrating"):
        compare(model, {"observing": observing}, _data(1), warmup=0, repeats=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_memory_uses_the_caching_allocator_statistics():
    x = torch.randn(BATCH, IN, device="cuda")
    r = compare(Doubler(), [], [x], warmup=0, repeats=1)
    two = 2 * x.numel() * x.element_size()
    assert two <= r.rows[0].peak_memory_bytes <= two + 2048, \
        "x*2 and its +1 are alive together; the allocator rounds blocks up to 512 bytes"
    assert "cuda" in r.settings["peak_memory_method"] and r.settings["device"] == "cuda:0"
