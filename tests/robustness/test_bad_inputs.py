"""Every public function x a corpus of bad values: a LowbitError naming the problem, never a raw
traceback, and no file outside the output directory changed.

Each CASE is ``(function name, call)``: ``call(bad)`` calls the public function with the bad
value in one argument and good values elsewhere.  Each BAD entry is ``(label, factory)``; a
case lists the labels that are bad for it (a 0-d tensor is fine for ``quantize_symmetric`` but
not for ``quantize_weight_per_channel``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def _meta_model() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(8, 4))


GOOD_X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))

#: label -> factory of a bad value (fresh each time: some are mutable)
BAD = {
    "none": lambda: None,
    "str": lambda: "not a tensor",
    "int": lambda: 3,
    "list": lambda: [1.0, 2.0],
    "dict": lambda: {"x": 1},
    "nan": lambda: torch.tensor([1.0, float("nan")]),
    "inf": lambda: torch.tensor([1.0, float("inf")]),
    "empty": lambda: torch.zeros(0),
    "empty2d": lambda: torch.zeros(0, 8),
    "zero_d": lambda: torch.tensor(1.5),
    "huge": lambda: torch.tensor([-3.4e38, 3.4e38]),
    "meta": lambda: torch.zeros(4, 8, device="meta"),
    "int_tensor": lambda: torch.ones(4, 8, dtype=torch.int64),
    "float_codes": lambda: torch.ones(4, 8),
    "wrong_shape": lambda: torch.randn(3, 5),
    "negative_scale": lambda: torch.tensor(-0.5),
    "nan_scale": lambda: torch.tensor(float("nan")),
    "zero_scale": lambda: 0.0,
    "meta_model": _meta_model,
    "float_model": _linear_model,
    "unknown_recipe": lambda: "w3a7-nonsense",
    "stdlib_callable": lambda: "os:system",
    "empty_batches": lambda: [],
    "nan_batches": lambda: [torch.full((4, 8), float("nan"))],
    "wrong_shape_batches": lambda: [torch.randn(4, 5)],
    "meta_batches": lambda: [torch.zeros(4, 8, device="meta")],
}

TENSOR_ARG = ["none", "str", "int", "list", "dict", "nan", "inf", "empty", "empty2d", "huge",
              "meta", "int_tensor"]
MODEL_ARG = ["none", "str", "int", "list", "dict"]


def _qp():
    return lowbit.choose_qparams(GOOD_X, lowbit.int8)


def _calibrated():
    model, _ = lowbit.quantize_model(_linear_model(), "w8a8-static", [GOOD_X], convert=False)
    return model


CASES = {
    "quantize_symmetric": (lambda bad: lowbit.quantize_symmetric(bad), TENSOR_ARG),
    "quantize_weight_per_channel": (lambda bad: lowbit.quantize_weight_per_channel(bad),
                                    TENSOR_ARG + ["zero_d"]),
    "choose_qparams": (lambda bad: lowbit.choose_qparams(bad, lowbit.int8),
                       [t for t in TENSOR_ARG if t != "int_tensor"]),
    "quantize(x)": (lambda bad: lowbit.quantize(bad, _qp()),
                    ["none", "str", "list", "nan", "inf", "meta"]),
    "quantize(qparams)": (lambda bad: lowbit.quantize(GOOD_X, bad), MODEL_ARG),
    "fake_quantize(x)": (lambda bad: lowbit.fake_quantize(bad, _qp()),
                         ["none", "str", "list", "meta"]),
    "fake_quantize(qparams)": (lambda bad: lowbit.fake_quantize(GOOD_X, bad), MODEL_ARG),
    "dequantize(q)": (lambda bad: lowbit.dequantize(bad, 0.1),
                      ["none", "str", "list", "float_codes", "meta"]),
    "dequantize(scale)": (lambda bad: lowbit.dequantize(torch.ones(4, dtype=torch.int8), bad),
                          ["none", "str", "negative_scale", "nan_scale", "zero_scale"]),
    "calculate_quantization_error": (
        lambda bad: lowbit.calculate_quantization_error(bad, torch.ones(2, dtype=torch.int8),
                                                        0.1),
        ["none", "str", "list", "int_tensor"]),
    "prepare(model)": (lambda bad: lowbit.prepare(bad, "w8a8"), MODEL_ARG),
    "prepare(recipe)": (lambda bad: lowbit.prepare(_linear_model(), bad),
                        ["none", "int", "list", "unknown_recipe", "stdlib_callable"]),
    "quantize_model(model)": (lambda bad: lowbit.quantize_model(bad, "w8a8", [GOOD_X]),
                              MODEL_ARG + ["meta_model"]),
    "quantize_model(calib_data)": (
        lambda bad: lowbit.quantize_model(_linear_model(), "w8a8-static", bad),
        ["none", "int", "empty_batches", "nan_batches", "wrong_shape_batches",
         "meta_batches"]),
    "convert": (lambda bad: lowbit.convert(bad), MODEL_ARG + ["float_model"]),
    "estimate_model_size": (lambda bad: lowbit.estimate_model_size(bad), MODEL_ARG),
    "load_recipe": (lambda bad: lowbit.load_recipe(bad),
                    ["none", "int", "list", "unknown_recipe", "stdlib_callable"]),
    "save(model)": (lambda bad: lowbit.save(bad, _OUT["dir"] / "ckpt"),
                    MODEL_ARG + ["float_model"]),
    "save(path)": (lambda bad: lowbit.save(_calibrated(), bad), ["none", "int", "list"]),
    "load(path)": (lambda bad: lowbit.load(bad, _linear_model()), ["none", "int", "list", "str"]),
    "load(model)": (lambda bad: lowbit.load(_OUT["dir"], bad), MODEL_ARG),
    "to_fixed": (lambda bad: lowbit.to_fixed(bad), ["none", "str", "list", "nan", "meta"]),
    "export_onnx(model)": (lambda bad: _onnx() and lowbit.export_onnx(bad, GOOD_X,
                                                                      _OUT["dir"] / "m.onnx"),
                           MODEL_ARG),
    "export_onnx(path)": (lambda bad: _onnx() and lowbit.export_onnx(_calibrated(), GOOD_X, bad),
                          ["none", "int", "list"]),
    "validate_onnx(path)": (lambda bad: _onnx() and lowbit.validate_onnx(bad, _linear_model(),
                                                                          GOOD_X),
                            ["none", "int", "list", "str"]),
    "pack": (lambda bad: lowbit.pack(bad, 4), ["none", "str", "list", "float_codes", "meta"]),
}


def _onnx() -> bool:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return True

_OUT: dict[str, Path] = {}
PARAMS = [pytest.param(name, label, id=f"{name}-{label}")
          for name, (_, labels) in CASES.items() for label in labels]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("name,label", PARAMS)
def test_a_bad_value_is_a_lowbit_error_and_changes_no_file(name, label, tmp_path, monkeypatch):
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "keep.txt").write_text("unrelated")
    _OUT["dir"] = tmp_path / "out"
    monkeypatch.chdir(watched)
    before = _snapshot(watched)
    call, _ = CASES[name]
    with pytest.raises(LowbitError) as info:
        call(BAD[label]())
    message = str(info.value)
    assert message and "\n" not in message.strip() or len(message.splitlines()) <= 3, message
    assert _snapshot(watched) == before, "no file outside the output directory changed"
