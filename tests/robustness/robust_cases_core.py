"""Bad-input cases of the tensor primitives, the model flow, checkpoints and ONNX.

Each CASE is ``name: (call, labels)``: ``call(bad)`` calls the public function with the bad
value in one argument and good values elsewhere; ``labels`` are the keys of ``BAD`` that are
bad for it (a 0-d tensor is fine for ``quantize_symmetric`` but not for
``quantize_weight_per_channel``). The name starts with the public name it covers.
"""

from __future__ import annotations

import torch

import lowbit
from robust_bad_values import (GOOD_X, MODEL_ARG, OUT, TENSOR_ARG, calibrated, linear_model,
                               need_onnx, qp)

CASES = {
    "quantize_symmetric": (lambda bad: lowbit.quantize_symmetric(bad), TENSOR_ARG),
    "quantize_weight_per_channel": (lambda bad: lowbit.quantize_weight_per_channel(bad),
                                    TENSOR_ARG + ["zero_d"]),
    "choose_qparams": (lambda bad: lowbit.choose_qparams(bad, lowbit.int8),
                       [t for t in TENSOR_ARG if t != "int_tensor"]),
    "quantize(x)": (lambda bad: lowbit.quantize(bad, qp()),
                    ["none", "str", "list", "nan", "inf", "meta"]),
    "quantize(qparams)": (lambda bad: lowbit.quantize(GOOD_X, bad), MODEL_ARG),
    "fake_quantize(x)": (lambda bad: lowbit.fake_quantize(bad, qp()),
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
    "prepare(recipe)": (lambda bad: lowbit.prepare(linear_model(), bad),
                        ["none", "int", "list", "unknown_recipe", "stdlib_callable"]),
    "quantize_model(model)": (lambda bad: lowbit.quantize_model(bad, "w8a8", [GOOD_X]),
                              MODEL_ARG + ["meta_model"]),
    "quantize_model(calib_data)": (
        lambda bad: lowbit.quantize_model(linear_model(), "w8a8-static", bad),
        ["none", "int", "empty_batches", "nan_batches", "wrong_shape_batches",
         "meta_batches"]),
    "convert": (lambda bad: lowbit.convert(bad), MODEL_ARG + ["float_model"]),
    "estimate_model_size": (lambda bad: lowbit.estimate_model_size(bad), MODEL_ARG),
    "load_recipe": (lambda bad: lowbit.load_recipe(bad),
                    ["none", "int", "list", "unknown_recipe", "stdlib_callable"]),
    "save(model)": (lambda bad: lowbit.save(bad, OUT["dir"] / "ckpt"),
                    MODEL_ARG + ["float_model"]),
    "save(path)": (lambda bad: lowbit.save(calibrated(), bad), ["none", "int", "list"]),
    "load(path)": (lambda bad: lowbit.load(bad, linear_model()), ["none", "int", "list", "str"]),
    "load(model)": (lambda bad: lowbit.load(OUT["dir"], bad), MODEL_ARG),
    "to_fixed": (lambda bad: lowbit.to_fixed(bad), ["none", "str", "list", "nan", "meta"]),
    "export_onnx(model)": (lambda bad: need_onnx() and lowbit.export_onnx(bad, GOOD_X,
                                                                      OUT["dir"] / "m.onnx"),
                           MODEL_ARG),
    "export_onnx(path)": (lambda bad: need_onnx() and lowbit.export_onnx(calibrated(), GOOD_X, bad),
                          ["none", "int", "list"]),
    "validate_onnx(path)": (lambda bad: need_onnx() and lowbit.validate_onnx(bad, linear_model(),
                                                                          GOOD_X),
                            ["none", "int", "list", "str"]),
    "pack": (lambda bad: lowbit.pack(bad, 4), ["none", "str", "list", "float_codes", "meta"]),
}
