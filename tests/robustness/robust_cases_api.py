"""Bad-input cases of the rest of the public API: diagnostics and search, comparison, QAT,
kernels, complex and fixed-point helpers, packing, metrics, and the vocabulary's classes.

Same form as ``robust_cases_core.py``: ``name: (call, labels)``, the name starting with the
public name (``Class.method`` for a class's entry point).
"""

from __future__ import annotations

import torch

import lowbit
from robust_bad_values import (GOOD_X, GOOD_Z, MODEL_ARG, OUT, calibrated_fq, complex_qparams,
                               converted, linear_model, need_onnx)

W8 = lowbit.QuantSpec()
CONFIG = lowbit.preset("w8a8").rules[0].config
BATCHES = ["none", "int", "empty_batches", "wrong_shape_batches", "meta_batches"]
METRIC_ARG = ["none", "str", "list", "nan", "inf", "empty", "meta"]
CODES_ARG = ["none", "str", "list", "float_codes", "meta"]
NAME_ARG = ["none", "int", "list", "unknown_recipe"]
NOT_A_SPEC = ["none", "str", "int"]
NOT_A_NUMBER = ["none", "str", "list"]
ANALYSIS = {"recipe": {}, "metric_name": "m", "higher_is_better": True, "float_metric": 1.0,
            "quantized_metric": 1.0, "model": {}, "layers": [], "advice": [], "seconds": {}}


def _ones(n: int = 2) -> torch.Tensor:
    return torch.ones(n)


def _analysis():
    return lowbit.Analysis.from_dict(dict(ANALYSIS))


def _with_calibrate(model):
    with lowbit.calibrate(model):
        pass


def _metric(fn):
    return (lambda bad: fn(bad, _ones()), METRIC_ARG)


CASES = {
    # diagnostics, search, comparison
    "analyze(model)": (lambda bad: lowbit.analyze(bad, "w8a8", [GOOD_X]), MODEL_ARG),
    "analyze(recipe)": (lambda bad: lowbit.analyze(linear_model(), bad, [GOOD_X]),
                        ["none", "int", "list", "unknown_recipe"]),
    "analyze(calib_data)": (lambda bad: lowbit.analyze(linear_model(), "w8a8-static", bad),
                            BATCHES),
    "analyze(eval_fn)": (lambda bad: lowbit.analyze(linear_model(), "w8a8", [GOOD_X], bad),
                         ["str", "int", "list"]),
    "search(model)": (lambda bad: lowbit.search(bad, ["w8a16"], "0.5x", [GOOD_X]), MODEL_ARG),
    "search(candidates)": (lambda bad: lowbit.search(linear_model(), bad, "0.5x", [GOOD_X]),
                           ["none", "int", "unknown_recipe", "empty_batches"]),
    "search(budget)": (lambda bad: lowbit.search(linear_model(), ["w8a16"], bad, [GOOD_X]),
                       ["none", "str", "list", "dict"]),
    "search(calib_data)": (lambda bad: lowbit.search(linear_model(), ["w8a16"], "0.5x", bad),
                           BATCHES),
    "compare(reference_model)": (lambda bad: lowbit.compare(bad, {"q": linear_model()},
                                                            [GOOD_X]), MODEL_ARG),
    "compare(candidates)": (lambda bad: lowbit.compare(linear_model(), bad, [GOOD_X]),
                            ["none", "int", "str"]),
    "compare(data)": (lambda bad: lowbit.compare(linear_model(), {"q": linear_model()}, bad),
                      BATCHES),
    "write_report(analysis)": (lambda bad: lowbit.write_report(bad, OUT["dir"]),
                               ["none", "str", "dict"]),
    "write_report(out_dir)": (lambda bad: lowbit.write_report(_analysis(), bad),
                              ["none", "int", "list"]),
    "Analysis.from_dict": (lambda bad: lowbit.Analysis.from_dict(bad),
                           ["none", "int", "list", "dict"]),
    "Analysis.load_json": (lambda bad: lowbit.Analysis.load_json(bad), ["none", "int", "str"]),
    # model flow, QAT, kernels
    "calibrate": (_with_calibrate, MODEL_ARG + ["float_model"]),
    "qat_finetune(model)": (lambda bad: lowbit.qat_finetune(bad, [GOOD_X]), MODEL_ARG),
    "qat_finetune(data)": (lambda bad: lowbit.qat_finetune(calibrated_fq(), bad),
                           ["none", "int", "empty_batches", "wrong_shape_batches"]),
    "tune_kernels(model)": (lambda bad: lowbit.tune_kernels(bad), MODEL_ARG),
    "tune_kernels(rows)": (lambda bad: lowbit.tune_kernels(converted(), rows=bad),
                           ["none", "str", "int", "list", "empty_batches"]),
    "set_kernel_path(model)": (lambda bad: lowbit.set_kernel_path(bad, "auto"), MODEL_ARG),
    "set_kernel_path(path)": (lambda bad: lowbit.set_kernel_path(converted(), bad),
                              NAME_ARG),
    "to_float": (lambda bad: lowbit.to_float(bad), MODEL_ARG),
    "find_roles": (lambda bad: lowbit.find_roles(bad), MODEL_ARG),
    "lowbit_state": (lambda bad: lowbit.lowbit_state(bad), MODEL_ARG + ["float_model"]),
    "PTQPipeline(model)": (lambda bad: lowbit.PTQPipeline(bad), MODEL_ARG),
    "PTQPipeline(recipe)": (lambda bad: lowbit.PTQPipeline(linear_model(), bad),
                            ["none", "int", "list", "unknown_recipe"]),
    "QuantizationConfig": (lambda bad: lowbit.QuantizationConfig(mode=bad),
                           ["none", "int", "unknown_recipe"]),
    "recipe_from_flags(quant_bits)": (lambda bad: lowbit.recipe_from_flags(quant_bits=bad),
                                      NOT_A_NUMBER),
    "recipe_from_flags(quant_mode)": (lambda bad: lowbit.recipe_from_flags(quant_mode=bad),
                                      ["none", "int", "unknown_recipe"]),
    "preset": (lambda bad: lowbit.preset(bad), NAME_ARG),
    "onnx_info": (lambda bad: need_onnx() and lowbit.onnx_info(bad),
                  ["none", "int", "list", "str"]),
    # complex and fixed point
    "choose_complex_qparams(z)": (lambda bad: lowbit.choose_complex_qparams(bad, lowbit.int8),
                                  ["none", "str", "nan", "meta", "complex_nan"]),
    "choose_complex_qparams(qtype)": (lambda bad: lowbit.choose_complex_qparams(GOOD_Z, bad),
                                      NOT_A_SPEC),
    "quantize_complex(z)": (lambda bad: lowbit.quantize_complex(bad, complex_qparams()),
                            ["none", "str", "nan", "complex_nan"]),
    "quantize_complex(cqp)": (lambda bad: lowbit.quantize_complex(GOOD_Z, bad), NOT_A_SPEC),
    "fake_quantize_complex(z)": (lambda bad: lowbit.fake_quantize_complex(
        bad, complex_qparams()), ["none", "str", "nan", "complex_nan"]),
    "fake_quantize_complex(cqp)": (lambda bad: lowbit.fake_quantize_complex(GOOD_Z, bad),
                                   NOT_A_SPEC),
    "dequantize_complex(q_real)": (lambda bad: lowbit.dequantize_complex(
        bad, torch.ones(4, 8, dtype=torch.int8), complex_qparams()), CODES_ARG),
    "dequantize_complex(cqp)": (lambda bad: lowbit.dequantize_complex(
        torch.ones(4, 8, dtype=torch.int8), torch.ones(4, 8, dtype=torch.int8), bad),
        NOT_A_SPEC),
    "ComplexQParams": (lambda bad: lowbit.ComplexQParams(bad, bad), NOT_A_SPEC),
    "fake_fixed": (lambda bad: lowbit.fake_fixed(bad), ["none", "str", "list", "nan", "meta"]),
    "from_fixed": (lambda bad: lowbit.from_fixed(bad), CODES_ARG),
    # primitives: qparams, packing, metrics
    "qparams_from_range(min_val)": (lambda bad: lowbit.qparams_from_range(
        bad, torch.ones(()), lowbit.int8, "symmetric", ()), ["none", "str", "nan", "meta"]),
    "qparams_from_range(qtype)": (lambda bad: lowbit.qparams_from_range(
        -torch.ones(()), torch.ones(()), bad, "symmetric", ()), NOT_A_SPEC),
    "pack_codes(q)": (lambda bad: lowbit.pack_codes(bad, lowbit.int4), CODES_ARG),
    "pack_codes(qtype)": (lambda bad: lowbit.pack_codes(torch.zeros(4, 8, dtype=torch.int8),
                                                        bad), NOT_A_SPEC),
    "unpack(packed)": (lambda bad: lowbit.unpack(bad, 4, 8), CODES_ARG),
    "unpack(bits)": (lambda bad: lowbit.unpack(torch.zeros(4, 4, dtype=torch.uint8), bad, 8),
                     ["none", "str", "list", "zero_scale"]),
    "unpack_codes(packed)": (lambda bad: lowbit.unpack_codes(bad, lowbit.int4, 8), CODES_ARG),
    "unpack_codes(k)": (lambda bad: lowbit.unpack_codes(torch.zeros(4, 4, dtype=torch.uint8),
                                                        lowbit.int4, bad),
                        ["none", "str", "list"]),
    "cosine": _metric(lowbit.cosine),
    "mse": _metric(lowbit.mse),
    "sqnr_db": _metric(lowbit.sqnr_db),
    "snr_db": _metric(lowbit.snr_db),
    "sat_ratio(x)": (lambda bad: lowbit.sat_ratio(bad, (-1.0, 1.0)),
                     ["none", "str", "list", "nan", "meta"]),
    "sat_ratio(clip)": (lambda bad: lowbit.sat_ratio(GOOD_X, bad), ["none", "str", "int"]),
    # vocabulary
    "QParams": (lambda bad: lowbit.QParams(bad, torch.zeros(()), lowbit.int8, ()), NOT_A_SPEC),
    "QType": (lambda bad: lowbit.QType(bad), NOT_A_NUMBER),
    "qtype_from_name": (lambda bad: lowbit.qtype_from_name(bad), NAME_ARG),
    "Scheme.parse": (lambda bad: lowbit.Scheme.parse(bad), NAME_ARG),
    "PerChannel": (lambda bad: lowbit.PerChannel(bad), NOT_A_NUMBER),
    "PerGroup": (lambda bad: lowbit.PerGroup(bad), NOT_A_NUMBER + ["zero_scale"]),
    "QuantSpec(qtype)": (lambda bad: lowbit.QuantSpec(qtype=bad), NAME_ARG),
    "QuantSpec(granularity)": (lambda bad: lowbit.QuantSpec(granularity=bad), NOT_A_SPEC),
    "parse_method": (lambda bad: lowbit.parse_method(bad), NAME_ARG),
    "LayerConfig": (lambda bad: lowbit.LayerConfig(weight=bad), ["str", "int", "list"]),
    "LayerRecord": (lambda bad: lowbit.LayerRecord("fc", "Linear", bad), NAME_ARG),
    "LayerRecord.from_dict": (lambda bad: lowbit.LayerRecord.from_dict(bad),
                              ["none", "int", "list", "dict"]),
    "ByName": (lambda bad: lowbit.ByName(bad), ["none", "int", "list"]),
    "ByType": (lambda bad: lowbit.ByType(bad), ["none", "int", "list"]),
    "ByRole": (lambda bad: lowbit.ByRole(bad), NAME_ARG),
    "Rule": (lambda bad: lowbit.Rule(bad), NOT_A_SPEC),
    "Recipe": (lambda bad: lowbit.Recipe(bad), NOT_A_SPEC),
    "make_observer": (lambda bad: lowbit.make_observer(bad), NOT_A_SPEC),
    "Observer": (lambda bad: lowbit.Observer(bad), NOT_A_SPEC),
    "TensorQuantizer(spec)": (lambda bad: lowbit.TensorQuantizer(bad), NOT_A_SPEC),
    "TensorQuantizer(fq_impl)": (lambda bad: lowbit.TensorQuantizer(W8, bad),
                                 ["none", "int", "unknown_recipe"]),
    "Budget": (lambda bad: lowbit.Budget(bytes=bad), NOT_A_NUMBER),
    "GPTQ": (lambda bad: lowbit.GPTQ(damp=bad), NOT_A_NUMBER),
    "AWQ": (lambda bad: lowbit.AWQ(grid=bad), NOT_A_NUMBER),
    "SmoothQuant": (lambda bad: lowbit.SmoothQuant(alpha=bad), NOT_A_NUMBER),
    "BNFold": (lambda bad: lowbit.BNFold(tol=bad), NOT_A_NUMBER),
    "CLE": (lambda bad: lowbit.CLE(iterations=bad), NOT_A_NUMBER),
    "BiasCorrection": (lambda bad: lowbit.BiasCorrection(mode=bad), NAME_ARG),
    "BNAffine": (lambda bad: lowbit.BNAffine(a_min=bad), NOT_A_NUMBER),
    "AdaRound": (lambda bad: lowbit.AdaRound(lr=bad), NOT_A_NUMBER),
    "AdaQuant": (lambda bad: lowbit.AdaQuant(iters=bad), NOT_A_NUMBER),
    "shard_batches": (lambda bad: lowbit.shard_batches(bad), ["none", "int", "str"]),
    # modules: the fake-quant twins are made from float modules, the converted ones by specs
    "QuantLinear.from_float": (lambda bad: lowbit.QuantLinear.from_float(bad, CONFIG),
                               ["none", "str", "float_model"]),
    "QuantConv1d.from_float": (lambda bad: lowbit.QuantConv1d.from_float(bad, CONFIG),
                               ["none", "str", "float_model"]),
    "QuantConv2d.from_float": (lambda bad: lowbit.QuantConv2d.from_float(bad, CONFIG),
                               ["none", "str", "float_model"]),
    "QuantEmbedding.from_float": (lambda bad: lowbit.QuantEmbedding.from_float(bad, CONFIG),
                                  ["none", "str", "float_model"]),
    "QuantLinear(config)": (lambda bad: lowbit.QuantLinear(8, 4, config=bad), NOT_A_SPEC),
    "QuantizedLinear": (lambda bad: lowbit.QuantizedLinear(8, 4, weight_spec=bad), NOT_A_SPEC),
    "QuantizedConv1d": (lambda bad: lowbit.QuantizedConv1d(2, 4, 3, weight_spec=bad),
                        NOT_A_SPEC),
    "QuantizedConv2d": (lambda bad: lowbit.QuantizedConv2d(2, 4, 3, weight_spec=bad),
                        NOT_A_SPEC),
    "QuantizedEmbedding": (lambda bad: lowbit.QuantizedEmbedding(8, 4, weight_spec=bad),
                           NOT_A_SPEC),
}

#: public callables with no bad-input row, and why none is needed
EXEMPT = {
    "AnyModule": "takes no arguments",
    "PerTensor": "takes no arguments",
    "PerToken": "takes no arguments",
    "describe_presets": "takes no arguments",
    "BNReestimate": "takes no arguments",
    "Granularity": "the abstract base of PerTensor/PerChannel/PerGroup/PerToken, not built "
                   "by users",
    "ComparisonResult": "a result lowbit.compare returns, not built from user input",
    "ExportResult": "a result lowbit.export_onnx returns, not built from user input",
    "SearchResult": "a result lowbit.search returns, not built from user input",
    "LowbitError": "an exception class",
    "ConfigError": "an exception class",
    "InputError": "an exception class",
    "StateError": "an exception class",
    "CheckpointError": "an exception class",
    "KernelUnavailableError": "an exception class",
    "ExportError": "an exception class",
}

# lowbit.compile (merged on main alongside this table): rows that apply once it is present
if hasattr(lowbit, "compile") and callable(getattr(lowbit, "compile")):
    CASES["compile(model)"] = (lambda bad: lowbit.compile(bad), MODEL_ARG)
    EXEMPT["CompiledModel"] = "a result lowbit.compile returns, not built from user input"
