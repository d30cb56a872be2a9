"""Ragged int4 groups in ONNX: blocked DequantizeLinear with ``ceil(K / block)`` scales
(ONNX allows a shorter last block), run in ONNX Runtime against lowbit's own model."""

from __future__ import annotations

import pytest
import torch

from lowbit.export import export_onnx, onnx_info, validate_onnx
from lowbit.model.convert import convert
from lowbit.nn.quantized import set_kernel_path

from ..model.test_ragged import Ragged, _batch, _quantized

pytestmark = pytest.mark.usefixtures("onnx_stack")


@pytest.mark.parametrize("converted", [False, True])
def test_ragged_groups_export_as_blocked_int4_and_run_in_onnx_runtime(tmp_path, converted):
    _, model = _quantized()
    if converted:
        model = convert(model)
        set_kernel_path(model, "reference")
    result = export_onnx(model, _batch(1), tmp_path / "ragged.onnx")
    assert result.opset == 21 and not result.fallbacks, result.fallbacks
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(result.path)).graph
    blocks = sorted(a.i for n in graph.node if n.op_type == "DequantizeLinear"
                    for a in n.attribute if a.name == "block_size")
    assert blocks == [128, 128], "proj and down blocked (ragged); conv and up are per axis"
    info = onnx_info(result.path)
    # int4 codes + zero points: proj [64, 576] in 5 groups, down [10, 200] in 2, up [200, 64]
    # in 1, conv [4, 27] in 1; each tensor holds exactly its own elements (no padding)
    codes = 64 * 576 + 10 * 200 + 200 * 64 + 4 * 27
    zero_points = 64 * 5 + 10 * 2 + 200 + 4
    assert info["initializer_types"]["INT4"] == codes + zero_points
    g = torch.Generator().manual_seed(7)
    report = validate_onnx(result.path, model, (torch.randn(5, 576, generator=g),
                                                torch.randn(5, 3, 6, 6, generator=g)))
    assert report["passed"] and report["mean_cosine"] >= 0.9999


def test_tied_embedding_and_head_export_and_run_in_onnx_runtime(tmp_path):
    """The converted tied pair (one int8 table for the embedding and the head) exports and
    matches lowbit's own model in ONNX Runtime."""
    from lowbit.workflow import quantize_model

    from ..model.test_ties import TiedLM, _ids

    q, _ = quantize_model(TiedLM().eval(), "w4a16-g128", [_ids(1)])
    set_kernel_path(q, "reference")
    assert q.emb.qdata is q.head.qdata
    result = export_onnx(q, (_ids(1),), tmp_path / "tied.onnx")
    assert not result.fallbacks, result.fallbacks
    report = validate_onnx(result.path, q, (_ids(5),))
    assert report["passed"] and report["mean_cosine"] >= 0.9999
