"""lowbit.export.validate: ONNX Runtime against PyTorch, loudly beyond tolerance."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from lowbit.errors import ConfigError, ExportError, InputError
from lowbit.export import validate_onnx
from lowbit.export.validate import EXACT_INT8_CONFIG, compare_outputs, ort_feeds, ort_session

pytestmark = pytest.mark.usefixtures("onnx_stack")


def test_validation_reports_the_numbers(digits_static_export, digits):
    qmodel, result = digits_static_export
    _, data = digits
    report = validate_onnx(result.path, qmodel, data.x_test[:9], atol=1.0)
    assert report["passed"] and report["atol"] == 1.0 and report["min_cosine_required"] == 0.999
    out = report["outputs"]["output"]
    assert out["shape"] == [9, 10] and out["mean_cosine"] >= 0.999
    assert report["max_abs_error"] == out["max_abs_error"] <= 1.0
    reference = validate_onnx(result.path, qmodel, data.x_test[:9], kernels="reference")
    assert reference["mean_cosine"] >= 0.999, "node by node, the file is lowbit's arithmetic"


def test_a_model_that_does_not_match_fails_loudly(digits_static_export, digits):
    from lowbit.zoo import DigitsCNN

    _, result = digits_static_export
    _, data = digits
    torch.manual_seed(123)
    stranger = DigitsCNN().eval()  # untrained: other outputs for the same inputs
    with pytest.raises(ExportError, match=r"ONNX Runtime output 'output' does not match the "
                                          r"PyTorch model: max abs error [\d.e+-]+ \(atol None\), "
                                          r"mean cosine -?[\d.]+ \(min_cosine 0.999\)"):
        validate_onnx(result.path, stranger, data.x_test[:4])


def test_a_tight_atol_fails_even_when_the_cosine_passes(digits_static_export, digits):
    qmodel, result = digits_static_export
    _, data = digits
    with pytest.raises(ExportError, match=r"\(atol 1e-12\), mean cosine 0\.99"):
        validate_onnx(result.path, qmodel, data.x_test[:64], atol=1e-12)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"atol": -1.0}, ConfigError, r"atol=-1.0 is invalid: allowed None or a number >= 0"),
    ({"min_cosine": 2}, ConfigError, r"min_cosine=2 is invalid: allowed a number in \[-1, 1\]"),
    ({"kernels": "fastest"}, ConfigError, r"kernels='fastest' is invalid: allowed one of"),
    ({"threads": 0}, ConfigError, r"threads=0 is invalid: allowed an integer in \[1, 1024\]"),
])
def test_bad_options_are_config_errors(digits_static_export, digits, kwargs, error, match):
    qmodel, result = digits_static_export
    with pytest.raises(error, match=match):
        validate_onnx(result.path, qmodel, digits[1].x_test[:2], **kwargs)


def test_missing_files_models_and_inputs_are_named(digits_static_export, digits, tmp_path):
    qmodel, result = digits_static_export
    x = digits[1].x_test[:2]
    with pytest.raises(ConfigError, match=r"path=.*nope.onnx' is invalid: allowed an existing"):
        validate_onnx(tmp_path / "nope.onnx", qmodel, x)
    with pytest.raises(ConfigError, match=r"model='dict' is invalid: allowed a torch.nn.Module"):
        validate_onnx(result.path, {}, x)
    session = ort_session(result.path)
    with pytest.raises(InputError, match=r"takes inputs \['x'\] but the batch lacks \['x'\]"):
        ort_feeds(session, {"pixels": x})
    with pytest.raises(InputError, match=r"takes 1 input\(s\) \['x'\] but the batch has 2"):
        ort_feeds(session, (x, x))
    assert set(ort_feeds(session, {"x": x})) == {"x"}


def test_models_with_other_outputs_are_named(digits_static_export, digits):
    _, result = digits_static_export
    x = digits[1].x_test[:3]

    class Narrow(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :5]

    class Twice(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10], x.flatten(1)[:, :10]

    with pytest.raises(ExportError, match=r"output 'output' has shape \(3, 10\) in ONNX Runtime "
                                          r"but \(3, 5\) in PyTorch"):
        validate_onnx(result.path, Narrow(), x)
    with pytest.raises(ExportError, match=r"ONNX Runtime returned 1 output\(s\) \['output'\], "
                                          r"the PyTorch model 2"):
        validate_onnx(result.path, Twice(), x)
    with pytest.raises(InputError, match=r"ONNX inputs must be tensors, got list"):
        ort_feeds(ort_session(result.path), [[1.0, 2.0]])


def test_missing_onnxruntime_says_what_to_install(digits_static_export, monkeypatch):
    _, result = digits_static_export
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(ExportError, match=r"needs the optional package 'onnxruntime' .*pip "
                                          r"install \"lowbit\[onnx\]\""):
        ort_session(result.path)


def test_exact_mode_sets_onnx_runtime_kernel_options(digits_static_export):
    _, result = digits_static_export
    session = ort_session(result.path, kernels="exact", threads=1)
    options = session.get_session_options()
    for key, value in EXACT_INT8_CONFIG.items():
        assert options.get_session_config_entry(key) == value
    assert options.intra_op_num_threads == 1


def test_compare_outputs_on_known_arrays():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=np.float32)
    b = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    m = compare_outputs(a, b)
    assert m["max_abs_error"] == 2.0 and m["mean_abs_error"] == pytest.approx(4.0 / 6)
    # rows: same direction (1), orthogonal (0), both zero (1)
    assert m["mean_cosine"] == pytest.approx(2.0 / 3) and m["min_cosine"] == 0.0
    assert m["cosine"] == pytest.approx(2.0 / (np.sqrt(5.0) * np.sqrt(5.0)))


@pytest.mark.parametrize("apply_ptq", [False, True])
def test_complex_outputs_compare_as_real_imaginary_pairs(tmp_path, apply_ptq):
    """The quantized Birman–Schwinger core: complex arithmetic exports as real/imaginary pairs.

    ONNX Runtime's ``exact`` session (all graph optimizations) fails to initialise on this
    graph (an ORT-internal "Attempt to replace the existing tensor"), so it is checked node by
    node (``reference``) and with ORT's default optimizations.
    """
    from lowbit.export import export_onnx
    from lowbit.zoo.birman_schwinger import potential_batches
    from lowbit.zoo.birman_schwinger_quant import create_quantized_birman_schwinger

    core = create_quantized_birman_schwinger(128, "ptq_int8")
    core.start_calibration()
    for v in potential_batches(2, batch=8, n_seq=128):
        core(v)
    core.end_calibration()
    if apply_ptq:
        core.apply_ptq()
    v = potential_batches(1, batch=3, n_seq=128, seed=7)[0]
    result = export_onnx(core.net, v, tmp_path / "core.onnx")
    for kernels in ("reference", "default"):
        report = validate_onnx(result.path, core.net, v, kernels=kernels, atol=1e-4)
        assert report["outputs"]["output"]["shape"] == [3, 128, 2]
        assert report["passed"] and report["min_cosine"] > 0.9999
