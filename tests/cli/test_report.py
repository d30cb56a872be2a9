"""``lowbit report``: writes the HTML/JSON/PNGs, names the worst layer, rejects bad flags."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_models import assert_one_line_error, cli_env, read_json, run_cli  # noqa: E402,F401

pytest.importorskip("matplotlib")


def test_report_on_digits_with_role_flags(tmp_path, capsys, cli_env):
    pytest.importorskip("sklearn")
    code, out, err = run_cli(capsys, "report", "--model", "digits", "--quantize_all",
                             "--quant_bits", "4", "--batches", "2", "--probes", "1",
                             "--out_dir", tmp_path)
    assert code == 0, err
    data = read_json(tmp_path / "report.json")
    assert data["recipe"]["name"] == "flags:proj+head+block:int4-minmax"
    losses = {l["name"]: l["sensitivity"]["quantize_only"] for l in data["layers"]}
    named = out.split("most sensitive layer (only it quantized): ")[1].split()[0]
    assert losses[named] == max(losses.values()), "the layer named loses most (ties allowed)"
    for name in ("report.html", "sqnr.png", "sensitivity.png", "histograms.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_report_with_a_search_adds_the_pareto_plot(tmp_path, capsys, cli_env):
    code, out, err = run_cli(capsys, "report", "--model", "fixtures_models:tiny_mlp",
                             "--recipe", "w8a8-static", "--no_hessian", "--candidates",
                             "float,w8a16", "--budget", "0.5x", "--out_dir", tmp_path)
    assert code == 0, err
    data = read_json(tmp_path / "report.json")
    assert data["search"]["cost_bytes"] <= data["search"]["budget_bytes"]
    assert (tmp_path / "pareto.png").is_file()
    assert "hessian" not in data["seconds"]


def test_sweep_batches_scores_the_sweeps_by_output_cosine(tmp_path, capsys, cli_env):
    code, _, err = run_cli(capsys, "report", "--model", "fixtures_models:tiny_mlp",
                           "--recipe", "w8a8-static", "--no_hessian", "--sweep_batches", "1",
                           "--out_dir", tmp_path)
    assert code == 0, err
    data = read_json(tmp_path / "report.json")
    assert data["sweep"] == {"metric_name": "cosine_to_float", "uses_eval_fn": False,
                             "batches": 1}
    assert all("quantize_only" in layer["sensitivity"] for layer in data["layers"])


@pytest.mark.parametrize("flags, needles", [
    (("--candidates", "w8a16"), ("--candidates/--budget", "both or neither")),
    (("--batches", "0"), ("--batches",)),
    (("--sweep_batches", "0"), ("--sweep_batches",)),
    (("--recipe", "nope"), ("--recipe",)),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, cli_env, flags, needles):
    code, _, err = run_cli(capsys, "report", "--model", "fixtures_models:tiny_mlp",
                           "--out_dir", tmp_path, *flags)
    assert_one_line_error(code, err, *needles)


def test_quantize_writes_a_light_report_by_default_and_none_skips_it(tmp_path, capsys, cli_env):
    code, out, err = run_cli(capsys, "quantize", "--model", "fixtures_models:tiny_mlp",
                             "--recipe", "w8a8-static", "--out_dir", tmp_path / "a")
    assert code == 0, err
    data = read_json(tmp_path / "a" / "report" / "report.json")
    assert data["recipe"]["name"] == "w8a8-static"
    assert all(layer["sensitivity"] == {} for layer in data["layers"])  # light: no sweeps
    assert (tmp_path / "a" / "report" / "report.html").is_file()
    code, _, err = run_cli(capsys, "quantize", "--model", "fixtures_models:tiny_mlp",
                           "--recipe", "w8a8-static", "--report", "none", "--out_dir",
                           tmp_path / "b")
    assert code == 0, err
    assert not (tmp_path / "b" / "report").exists()
