"""lowbit.export.graph: marker expansion, cast folding, names, metadata, and onnx_info."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lowbit import PerTensor, PerToken, QuantSpec, Scheme, TensorQuantizer, int8, uint8
from lowbit.errors import ConfigError, ExportError
from lowbit.export import onnx_info, ops
from lowbit.export.graph import (expand_markers, fold_initializer_casts, node_counts,
                                 set_metadata, strip_prefix)
from lowbit.export.validate import ort_session

onnx = pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' extra")
pytest.importorskip("onnxruntime", reason="validation needs the 'onnx' extra")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _marker_model(attrs: dict, opset: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 16])
    node = helper.make_node(ops.DYNAMIC_MARKER, ["x"], ["y"], domain=ops.MARKER_DOMAIN, **attrs)
    graph = helper.make_graph([node], "marker", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid(ops.MARKER_DOMAIN, 1)])


def _activations() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=g) * 4
    x[0, 0] = 0.0  # all-zero token
    x[2, 1, :3] = torch.tensor([0.5, -1.5, 60.0])
    return x


@pytest.mark.parametrize("opset", [17, 21])
@pytest.mark.parametrize("spec", [
    QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerToken(), dynamic=True),
    QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerToken(), dynamic=True),
    QuantSpec(qtype=uint8, scheme=Scheme.SYMMETRIC, granularity=PerTensor(), dynamic=True),
], ids=["affine-token", "symmetric-token", "uint8-tensor"])
def test_expanded_dynamic_quantization_runs_lowbits_arithmetic_in_onnx_runtime(spec, opset,
                                                                                tmp_path):
    per_token = isinstance(spec.granularity, PerToken)
    model = _marker_model(ops.dynamic_attrs(spec.qtype, spec.scheme, per_token), opset)
    assert expand_markers(model, opset) == 1
    counts = node_counts(model)
    assert counts["ReduceMin"] == counts["ReduceMax"] == 1 and counts["Clip"] >= 1
    assert all(o.domain != ops.MARKER_DOMAIN for o in model.opset_import), "marker opset gone"
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = _activations()
    expected = TensorQuantizer(spec)(x).numpy()
    for kernels in ("reference", "exact"):
        got = ort_session(path, kernels=kernels).run(None, {"x": x.numpy()})[0]
        np.testing.assert_array_equal(got, expected, err_msg=f"{kernels}: not bit-exact")


def test_unknown_markers_are_a_bug_report():
    model = _marker_model({}, 21)
    model.graph.node[0].op_type = "Mystery"
    with pytest.raises(ExportError, match=r"unknown lowbit marker node 'Mystery'"):
        expand_markers(model, 21)


def test_casts_of_initializers_become_typed_initializers(tmp_path):
    codes = np.array([[-8, -1, 0, 7], [3, 2, -5, 1]], dtype=np.int8)
    inits = [numpy_helper.from_array(codes, "w.codes"),
             numpy_helper.from_array(np.array([0.5, 0.25], np.float32), "w.scale"),
             numpy_helper.from_array(np.array([1, -2], np.int8), "w.zero")]
    nodes = [helper.make_node("Cast", ["w.codes"], ["c4"], to=TensorProto.INT4),
             helper.make_node("Cast", ["w.zero"], ["z4"], to=TensorProto.INT4),
             helper.make_node("DequantizeLinear", ["c4", "w.scale", "z4"], ["y"], axis=0)]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [], [y], inits),
                              opset_imports=[helper.make_opsetid("", 21)])
    assert fold_initializer_casts(model) == 2
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear"]
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types == {"w.codes": TensorProto.INT4, "w.scale": TensorProto.FLOAT,
                     "w.zero": TensorProto.INT4}, "the INT4 tensors keep the codes' names"
    path = tmp_path / "int4.onnx"
    onnx.save(model, str(path))
    got = ort_session(path, kernels="reference").run(None, {})[0]
    expected = (codes.astype(np.float32) - np.array([[1], [-2]])) * np.array([[0.5], [0.25]])
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_strip_prefix_and_metadata():
    init = numpy_helper.from_array(np.zeros(2, np.float32), "model.fc.bias")
    node = helper.make_node("Add", ["x", "model.fc.bias"], ["y"])
    vi = helper.make_tensor_value_info
    model = helper.make_model(helper.make_graph(
        [node], "g", [vi("x", TensorProto.FLOAT, [2])], [vi("y", TensorProto.FLOAT, [2])], [init]))
    strip_prefix(model, "model.")
    assert model.graph.initializer[0].name == "fc.bias" and model.graph.node[0].input[1] == "fc.bias"
    set_metadata(model, {"a": "1", "b": "2"})
    set_metadata(model, {"a": "3"})
    assert {p.key: p.value for p in model.metadata_props} == {"b": "2", "a": "3"}


def test_onnx_info_describes_the_digits_export(digits_static_export, digits):
    qmodel, result = digits_static_export
    info = onnx_info(result.path)
    assert info["inputs"] == [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32",
                               "onnx_type": "FLOAT"}]
    assert info["outputs"] == [{"name": "output", "shape": ["batch", 10], "dtype": "float32",
                                "onnx_type": "FLOAT"}]
    layers = [m for m in qmodel.modules() if hasattr(m, "weight_quantizer")]
    assert info["quantize_linear"] == len(layers), "one QuantizeLinear per static activation"
    assert info["dequantize_linear"] == 2 * len(layers), "weights and activations"
    assert info["opset"] == 21
    # codes, bias and per-output-channel scale + zero point per layer, act scale + zero point
    float_params = sum(p.numel() for p in digits[0].parameters())
    extra = sum(2 * m.weight.shape[0] + 2 for m in layers)
    assert info["parameters"] == float_params + extra
    assert info["initializer_types"]["INT8"] == sum(m.weight.numel() + m.weight.shape[0] + 1
                                                    for m in layers)
    quant = info["quantization"]
    assert quant["recipe"]["name"] == "w8a8-static" and quant["recipe_name"] == "w8a8-static"
    assert quant["version"] == __import__("lowbit").__version__
    assert quant["exporter"] == "dynamo" and quant["opset"] == 21
    assert [layer["name"] for layer in quant["layers"]] == [r.name for r in result.records]
    assert json.loads(info["metadata"]["lowbit.inputs"]) == ["x"]


def test_onnx_info_refuses_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match=r"path=.*missing.onnx' is invalid: allowed an existing"):
        onnx_info(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a protobuf\xff" * 3)
    with pytest.raises(ExportError, match=r"junk.onnx is not a readable ONNX model"):
        onnx_info(junk)
