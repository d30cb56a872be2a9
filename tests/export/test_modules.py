"""lowbit.export.modules: the export-time rewrite of lowbit modules (no ONNX needed)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit
from lowbit import (ByType, LayerConfig, PerChannel, PerTensor, QType, QuantSpec, Recipe, Rule,
                    Scheme, TensorQuantizer, int8)
from lowbit.errors import ExportError, StateError
from lowbit.export.modules import (REWRITES, ExportAct, ExportEmbedding, ExportLinear,
                                   register_rewrite, rewrite)
from lowbit.nn import QuantLinear

if str(Path(__file__).resolve().parent) not in sys.path:  # for export_helpers
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_helpers import TinyMLP, TinyNet, token_batches  # noqa: E402


def _quantized(model, recipe, convert):
    calib = token_batches(3) if isinstance(model, TinyMLP) else \
        [torch.randn(4, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    qmodel, _ = lowbit.quantize_model(model, recipe, calib, convert=convert)
    return qmodel


def _rewritten(qmodel, opset=21, shapes=None):
    return rewrite(copy.deepcopy(qmodel).eval(), opset, shapes or {})


def test_rewrite_replaces_every_lowbit_layer_and_records_how(tiny_mlp):
    qmodel = _quantized(tiny_mlp, "w8a8-static", convert=False)
    root, records = _rewritten(qmodel)
    assert isinstance(root.emb, ExportEmbedding)
    assert isinstance(root.fc1, ExportLinear) and isinstance(root.fc2, ExportLinear)
    assert [r.name for r in records] == ["emb", "fc1", "fc2"]
    assert all(r.action == "quantized" and r.kernel_path == "onnx" for r in records)
    assert records[1].kernel == ("weight: DequantizeLinear INT8 per axis 1; act: "
                                 "QuantizeLinear/DequantizeLinear INT8 per tensor")
    assert records[0].kernel == "weight: DequantizeLinear INT8 per axis 0; act: float"
    assert records[1].config == qmodel.fc1.config.to_dict()


def test_rewritten_model_computes_what_lowbit_computes(tiny_mlp):
    """Same weights and activations; the Linear runs as MatMul on W^T (float reassociation)
    and QuantizeLinear divides by the scale (ties within one ulp may round differently)."""
    ids = token_batches(1, batch=5, seq=7, seed=9)[0]
    for recipe in ("w8a8-static", "w8a8", "w8a16"):
        qmodel = _quantized(tiny_mlp, recipe, convert=True)
        root, _ = _rewritten(qmodel)
        with torch.no_grad():
            expected, got = qmodel(ids), root(ids)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=recipe)


def test_fake_quant_and_converted_models_export_the_same_tensors(tiny_mlp):
    fake = _quantized(tiny_mlp, "w8a8-static", convert=False)
    real = lowbit.convert(fake)
    a = dict(_rewritten(fake)[0].named_buffers())
    b = dict(_rewritten(real)[0].named_buffers())
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between fake-quant and converted"


def test_weight_only_embedding_and_disabled_quantizers():
    torch.manual_seed(1)
    qmodel = _quantized(TinyNet().eval(), "w8a8-static", convert=False)
    qmodel.fc2.set_fake_quant(False)  # fc2 now runs float
    root, records = _rewritten(qmodel)
    assert root.fc2.act is None and root.fc2.weight.onnx_type is None
    assert records[1].kernel == "weight: float weights (not quantized); act: float"
    assert records[1].action == "float" and "disabled" in records[1].reason
    with torch.no_grad():
        x = torch.randn(3, 8)
        torch.testing.assert_close(root(x), qmodel(x), rtol=1e-5, atol=1e-5)


def test_uncalibrated_and_calibrating_layers_are_refused_by_name(tiny_mlp):
    prepared = lowbit.prepare(tiny_mlp, "w8a8-static")
    with pytest.raises(StateError, match=r"emb: weight quantizer \(int8, per_channel\) is "
                                         r"uncalibrated; calibrate the model"):
        _rewritten(prepared)
    prepared.start_calibration()
    with pytest.raises(StateError, match=r"emb: weight quantizer is still observing"):
        _rewritten(prepared)


def test_a_lowbit_module_without_a_rewrite_is_named():
    class MyQuantLinear(QuantLinear):
        """A user's subclass: its forward may differ, so the exporter cannot assume it."""

    model = nn.Sequential(nn.Linear(4, 4))
    config = LayerConfig(QuantSpec(qtype=int8, granularity=PerChannel(0)), None)
    layer = MyQuantLinear.from_float(model[0], config)
    layer.start_observing()
    layer.freeze()
    model[0] = layer
    with pytest.raises(ExportError, match=r"0 \(MyQuantLinear\) cannot be exported: lowbit has "
                                          r"no ONNX rewrite for it; allowed: .*QuantLinear"):
        rewrite(model, 21, {})


def test_dynamic_per_channel_activations_cannot_be_exported():
    spec = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerChannel(1), dynamic=True)
    model = nn.Sequential(TensorQuantizer(spec))
    with pytest.raises(ExportError, match=r"0: dynamic per_channel activations cannot be "
                                          r"exported; allowed dynamic granularities"):
        rewrite(model, 21, {})


def test_standalone_quantizers_become_activation_exports():
    spec = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, granularity=PerTensor())
    quantizer = TensorQuantizer(spec)
    quantizer.start_observing()
    quantizer(torch.linspace(-2, 3, 50))
    quantizer.freeze()
    off = TensorQuantizer(spec)
    off.enabled = False
    root, records = rewrite(nn.Sequential(quantizer, off), 21, {"0": (50,)})
    assert isinstance(root[0], ExportAct) and root[0].mode == "qdq"
    assert isinstance(root[1], nn.Identity), "a disabled quantizer passes its input through"
    x = torch.linspace(-3, 4, 31)
    torch.testing.assert_close(root(x), quantizer(x), rtol=0, atol=1e-6)
    assert [r.module_type for r in records] == ["TensorQuantizer", "TensorQuantizer"]
    assert [r.action for r in records] == ["quantized", "float"]


def test_grids_without_an_onnx_type_are_written_as_arithmetic():
    int6 = QType(6)
    recipe = Recipe((Rule(ByType(("Linear",)), LayerConfig(
        QuantSpec(qtype=int6, granularity=PerChannel(0)),
        QuantSpec(qtype=int6, scheme=Scheme.AFFINE))),), "w6a6")
    torch.manual_seed(2)
    qmodel = _quantized(TinyNet().eval(), recipe, convert=False)
    root, records = _rewritten(qmodel, shapes={"fc1": (4, 8), "fc2": (4, 16)})
    assert root.fc1.act.mode == "arith"
    assert records[0].action == "fallback"
    assert "int6 has no exact ONNX QuantizeLinear type at opset 21" in records[0].kernel_reason
    x = torch.randn(6, 8)
    with torch.no_grad():
        torch.testing.assert_close(root(x), qmodel(x), rtol=1e-5, atol=1e-5)


def test_register_rewrite_adds_an_entry():
    class Doubler(nn.Module):
        def forward(self, x):
            return 2 * x

    class LowbitDoubler(TensorQuantizer):
        pass

    register_rewrite(LowbitDoubler, lambda name, m, opset, shape: (Doubler(), None))
    try:
        spec = QuantSpec(qtype=int8, dynamic=True, granularity=PerTensor())
        root, records = rewrite(nn.Sequential(LowbitDoubler(spec)), 21, {})
        assert isinstance(root[0], Doubler) and records == [None]
    finally:
        del REWRITES[LowbitDoubler]
