"""`lowbit export` and `lowbit compare` on the digits example: files, exit codes, errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import types

import pytest
import torch

from lowbit.cli.main import main

HAS_EXPORT = importlib.util.find_spec("lowbit.export") is not None
needs_export = pytest.mark.skipif(not HAS_EXPORT, reason="lowbit.export (ONNX export) is not "
                                                         "in this checkout yet")
pytest.importorskip("sklearn", reason="the digits example needs scikit-learn")


@pytest.fixture(scope="module", autouse=True)
def digits_cache(tmp_path_factory):
    """One digits training per module: LOWBIT_CACHE points at a module-wide tmp folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWBIT_CACHE", str(tmp_path_factory.mktemp("lowbit_cache")))
        yield


@pytest.fixture(scope="module")
def checkpoints(digits_cache, tmp_path_factory):
    """A calibrated (fake-quant) and a converted w8a16 checkpoint of the digits CNN."""
    import lowbit.model.checkpoint as ckpt
    from lowbit.cli.examples import load_example
    from lowbit.model import convert, quantize_model

    torch.manual_seed(0)
    example = load_example("digits")
    fake, _ = quantize_model(example.model, "w8a16", example.calib_data[:2], convert=False)
    root = tmp_path_factory.mktemp("ckpt")
    return ckpt.save(fake, root / "calibrated"), ckpt.save(convert(fake), root / "quantized")


def _one_error_line(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowbit: error:"), err
    for needle in needles:
        assert needle in err[0], f"{needle!r} missing from {err[0]!r}"


# ------------------------------------------------------------------------------- compare


def test_compare_recipes_and_checkpoints(checkpoints, tmp_path, capsys):
    calibrated, quantized = checkpoints
    out = tmp_path / "cmp"
    status = main(["compare", "--model", "digits", "--recipes", "w8a8-static",
                   "--ckpt", str(calibrated), "--ckpt", str(quantized), "--out_dir", str(out),
                   "--batches", "1", "--warmup", "0", "--repeats", "1"])
    assert status == 0
    data = json.loads((out / "compare.json").read_text())
    names = [r["name"] for r in data["rows"]]
    assert names == ["float", "w8a8-static fake-quant", "w8a8-static real",
                     f"{calibrated} fake-quant", f"{calibrated} real", f"{quantized} real"]
    rows = {r["name"]: r for r in data["rows"]}
    assert data["metric_name"] == "accuracy_pct" and data["settings"]["batches"] == 1
    for name in names[1:]:
        assert abs(rows[name]["metric"] - rows["float"]["metric"]) < 3.0, \
            f"{name}: 8-bit weights cost the digits CNN at most a few points"
        assert 0.99 < rows[name]["cosine"] <= 1.0
    assert rows["w8a8-static real"]["compression"] > 2.5, "int8 weights vs fp32"
    assert rows["w8a8-static fake-quant"]["compression"] <= 1.0
    assert rows[f"{calibrated} real"]["storage_bytes"] == rows[f"{quantized} real"]["storage_bytes"]
    md = (out / "compare.md").read_text()
    assert all(f"| {n} |" in md for n in names)
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[0].split()[:3] == ["model", "storage", "compression"]
    assert "accuracy_pct" in stdout.splitlines()[0]


@pytest.mark.parametrize("argv, needles", [
    (["--recipes", "w8a8-static,w9a9"], ("--recipes='w9a9'", "preset")),
    (["--recipes", "w8a8,,w8a16"], ("--recipes='w8a8,,w8a16'", "empty")),
    (["--repeats", "0"], ("--repeats=0", ">= 1")),
    (["--batches", "0"], ("--batches=0", ">= 1")),
])
def test_compare_bad_flags_exit_2(argv, needles, tmp_path, capsys):
    status = main(["compare", "--model", "digits", "--out_dir", str(tmp_path), *argv])
    assert status == 2
    _one_error_line(capsys, *needles)
    assert not (tmp_path / "compare.json").exists()


def test_compare_unknown_model_exits_2(tmp_path, capsys):
    assert main(["compare", "--model", "nope", "--out_dir", str(tmp_path)]) == 2
    _one_error_line(capsys, "--model='nope'")


# -------------------------------------------------------------------------------- export


@pytest.mark.parametrize("argv, needles", [
    (["--recipe", "w8a8-static", "--out", "model.pt"], ("--out='model.pt'", ".onnx")),
    (["--recipe", "w8a8-static", "--out", "m.onnx", "--opset", "0"], ("--opset=0",)),
])
def test_export_bad_flags_exit_2(argv, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", "digits", *argv]) == 2
    _one_error_line(capsys, *needles)
    assert not list(tmp_path.iterdir()), "nothing is written for a bad flag"


@pytest.mark.parametrize("source", [[], ["--ckpt", "c", "--recipe", "w8a16"]])
def test_export_needs_exactly_one_source(source, tmp_path, capsys):
    assert main(["export", "--model", "digits", *source, "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--ckpt" in capsys.readouterr().err, "argparse names the --ckpt/--recipe choice"


@needs_export
def test_export_checkpoint_with_validation(checkpoints, tmp_path, capsys):
    """The real exporter and ONNX Runtime, on a converted checkpoint (one export: it is slow)."""
    _, quantized = checkpoints
    out = tmp_path / "onnx" / "digits.onnx"
    status = main(["export", "--model", "digits", "--ckpt", str(quantized), "--out", str(out),
                   "--validate"])
    assert status == 0
    assert out.stat().st_size > 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["source"] == {"ckpt": str(quantized), "recipe": None}
    assert report["info"] and report["export"]["path"] == str(out)
    assert report["validation"]["passed"] is True, "--validate saves the ONNX Runtime comparison"
    stdout = capsys.readouterr().out
    assert "validation (ONNX Runtime vs PyTorch)" in stdout and f"wrote {out}" in stdout
    lines = stdout.splitlines()
    assert "passed: True" in lines
    assert "quantize_linear: 0" in lines and "dequantize_linear: 6" in lines, \
        "w8a16 on six Conv/Linear layers: one DequantizeLinear per int8 weight, float inputs"


@dataclasses.dataclass
class _FakeResult:
    path: str
    opset: int


@pytest.fixture
def fake_export(monkeypatch):
    """A stand-in ``lowbit.export`` that records its calls: tests the command's plumbing
    (files, printing, exit codes) apart from the real exporter."""
    from lowbit.errors import ExportError

    calls = {}
    module = types.ModuleType("lowbit.export")

    def export_onnx(model, example_inputs, path, *, opset=None, dynamic_batch=True):
        calls["export"] = (example_inputs.shape[0], opset, dynamic_batch)
        path.write_bytes(b"onnx")
        return _FakeResult(str(path), opset or 17)

    def onnx_info(path):
        return {"inputs": [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}],
                "opset": 17, "quantize_linear": 5, "metadata": {"lowbit.recipe": "{...}"}}

    def validate_onnx(path, model, inputs, *, atol=None, min_cosine=0.999):
        calls["validate"] = inputs.shape[0]
        if calls.get("fail"):
            raise ExportError("ONNX Runtime output differs: cosine 0.5 < 0.999")
        return {"passed": True, "max_abs_error": 0.0, "mean_cosine": 1.0}

    module.export_onnx, module.onnx_info, module.validate_onnx = export_onnx, onnx_info, validate_onnx
    monkeypatch.setitem(sys.modules, "lowbit.export", module)
    return calls


def test_export_plumbing_writes_onnx_and_json(fake_export, checkpoints, tmp_path, capsys):
    _, quantized = checkpoints
    out = tmp_path / "d.onnx"
    assert main(["export", "--model", "digits", "--ckpt", str(quantized), "--out", str(out),
                 "--opset", "18", "--validate"]) == 0
    assert fake_export["export"] == (64, 18, True), "first calibration batch, flags passed on"
    assert fake_export["validate"] == 32, "a dynamic batch is validated at another batch size"
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["export"] == {"path": str(out), "opset": 18}
    assert report["info"]["metadata"] == {"lowbit.recipe": "{...}"}, "the full info is saved"
    assert report["validation"] == {"passed": True, "max_abs_error": 0.0, "mean_cosine": 1.0}
    stdout = capsys.readouterr().out
    for line in ("  x: float32[batch, 1, 8, 8]", "quantize_linear: 5", "opset: 17",
                 "passed: True", "mean_cosine: 1"):
        assert line in stdout.splitlines(), f"{line!r} is in the printed summary"
    assert "lowbit.recipe" not in stdout, "metadata stays in the JSON, off the terminal"


def test_export_recipe_with_fixed_batch(fake_export, tmp_path):
    out = tmp_path / "d.onnx"
    assert main(["export", "--model", "digits", "--recipe", "w8a16", "--out", str(out),
                 "--no_dynamic_batch", "--validate"]) == 0
    assert fake_export["export"][2] is False, "--no_dynamic_batch is passed on"
    assert fake_export["validate"] == 64, "a fixed batch is validated at the example's size"
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["source"] == {"ckpt": None, "recipe": "w8a16"}


def test_export_failed_validation_exits_2_and_keeps_the_report(fake_export, checkpoints,
                                                               tmp_path, capsys):
    _, quantized = checkpoints
    fake_export["fail"] = True
    out = tmp_path / "d.onnx"
    assert main(["export", "--model", "digits", "--ckpt", str(quantized), "--out", str(out),
                 "--validate"]) == 2
    _one_error_line(capsys, "cosine 0.5 < 0.999")
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["validation"]["passed"] is False and "cosine 0.5" in report["validation"]["error"]


def test_export_without_the_export_package_exits_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lowbit.export", None)  # import now raises ImportError
    assert main(["export", "--model", "digits", "--recipe", "w8a16",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    _one_error_line(capsys, "pip install 'lowbit[onnx]'")


def test_smaller_batch_halves_every_batch_tensor():
    from lowbit.cli.export import smaller_batch

    batch = {"input_ids": torch.zeros(8, 5), "attention_mask": torch.ones(8, 5),
             "scale": torch.tensor(1.0)}
    cut = smaller_batch(batch)
    assert cut["input_ids"].shape == (4, 5) and cut["attention_mask"].shape == (4, 5)
    assert cut["scale"] is batch["scale"], "tensors without the batch dimension are kept"
    assert smaller_batch((torch.zeros(6, 2),))[0].shape == (3, 2)
    one = torch.zeros(1, 3)
    assert smaller_batch(one) is one, "a batch of one cannot shrink"
