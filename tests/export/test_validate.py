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
    assert out["max_abs_error"] <= report["max_abs_error"] <= 1.0  # the report's max also
    # covers the second, different probe batch
    reference = validate_onnx(result.path, qmodel, data.x_test[:9], kernels="reference")
    assert reference["mean_cosine"] >= 0.999, "node by node, the file is lowbit's arithmetic"


def test_a_model_that_does_not_match_fails_loudly(digits_static_export, digits):
    from lowbit.zoo import DigitsCNN

    _, result = digits_static_export
    _, data = digits
    torch.manual_seed(123)
    stranger = DigitsCNN().eval()  # untrained: other outputs for the same inputs
    with pytest.raises(ExportError, match=r"ONNX Runtime output 'output' does not match the "
                                          r"PyTorch model on the given inputs: max abs error "
                                          r"[\d.e+-]+ \(atol None\), relative error [\d.e+-]+ "
                                          r".*mean cosine -?[\d.]+ \(min_cosine 0.999\)"):
        validate_onnx(result.path, stranger, data.x_test[:4])


def test_a_tight_atol_fails_even_when_the_cosine_passes(digits_static_export, digits):
    qmodel, result = digits_static_export
    _, data = digits
    with pytest.raises(ExportError, match=r"\(atol 1e-12\), relative error .*mean cosine 0\.99"):
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

# ---------------------------------------------------------------------------- magnitude, branches


class _Scaled(torch.nn.Module):
    """``model``'s output times ``factor``: the same direction, another size."""

    def __init__(self, model, factor):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


def test_outputs_100x_too_large_fail_although_the_cosine_is_perfect(digits_static_export,
                                                                      digits):
    """Cosine alone passed these (it ignores size): the relative error must catch them."""
    qmodel, result = digits_static_export
    x = digits[1].x_test[:8]
    with pytest.raises(ExportError, match=r"relative error 0\.99\d* \(max_rel_error 0\.04\d+, "
                                          r"sqrt\(2 \* \(1 - min_cosine\)\).*norm ratio 0\.0(1|099)"):
        validate_onnx(result.path, _Scaled(qmodel, 100.0), x)
    report = validate_onnx(result.path, qmodel, x)
    assert report["max_rel_error"] <= report["max_rel_error_allowed"] < 0.05
    assert report["rel_error_bound_source"].startswith("sqrt(2 * (1 - min_cosine))")
    assert report["outputs"]["output"]["norm_ratio"] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ExportError, match=r"max_rel_error 1e-09, given"):
        validate_onnx(result.path, qmodel, x, max_rel_error=1e-9)


def test_the_rel_error_bound_follows_the_narrowest_grid():
    from lowbit.export.validate import narrowest_bits, rel_error_bound
    from export_helpers import W4_G16, TinyMLP, token_batches

    torch.manual_seed(0)
    fq, _ = __import__("lowbit").quantize_model(TinyMLP().eval(), W4_G16, token_batches(1),
                                                convert=False)
    assert narrowest_bits(fq) == 4 and narrowest_bits(torch.nn.Linear(2, 2)) is None
    bound, source = rel_error_bound(fq, 0.999)
    assert bound == 0.25 and "4 bits" in source
    assert rel_error_bound(torch.nn.Linear(2, 2), 0.98)[0] == pytest.approx(0.2)


class _Branchy(torch.nn.Module):
    """Data-dependent Python control flow: the exporter can only freeze one branch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = self.fc(x)
        if x.sum() > 0:
            return y
        return -y


def test_a_branch_frozen_at_export_warns_and_fails_validation_on_other_inputs(tmp_path):
    """Validation on the export example alone passed a file holding one branch only."""
    from lowbit.export import export_onnx

    model = _Branchy().eval()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    x = x if float(x.sum()) > 0 else -x
    with pytest.warns(UserWarning, match="traced through Python control flow"):
        result = export_onnx(model, x, tmp_path / "branchy.onnx")
    assert "Python bool" in result.metadata["lowbit.traced_control_flow"]
    with pytest.warns(UserWarning, match="traced through Python control flow"), \
            pytest.raises(ExportError, match=r"on the probe inputs.*a branch was frozen"):
        validate_onnx(result.path, model, x)


def test_probe_inputs_change_float_values_and_keep_token_ids():
    from lowbit.export.validate import probe_inputs

    x = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    assert torch.equal(probe_inputs(x), -x)
    assert torch.equal(probe_inputs((torch.tensor([[1.0, 2.0]]),))[0], torch.tensor([[2.0, 1.0]]))
    assert probe_inputs(torch.tensor([[1, 2]])) is None
    ids = torch.tensor([[1, 2]])
    out = probe_inputs({"input_ids": ids, "x": x})
    assert out["input_ids"] is ids and torch.equal(out["x"], -x)


def test_a_file_that_is_not_onnx_and_inputs_of_the_wrong_shape_are_clear_errors(
        digits_static_export, digits, tmp_path):
    qmodel, result = digits_static_export
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(ExportError, match=r"junk.onnx: ONNX Runtime cannot load this file .*"
                                          r"Fix: pass a file written by export_onnx"):
        validate_onnx(junk, qmodel, digits[1].x_test[:2])
    with pytest.raises(InputError, match=r"ONNX Runtime cannot run the inputs .*\(3, 5\).*"
                                         r"Fix: pass inputs of the shapes"):
        validate_onnx(result.path, qmodel, torch.randn(3, 5))
    with pytest.raises(ConfigError, match=r"path='int' is invalid"):
        validate_onnx(3, qmodel, digits[1].x_test[:2])



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
