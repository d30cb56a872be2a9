"""``lowbit tune``: every quantized linear layer decided at the asked row counts, cached."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_models import assert_one_line_error, cli_env, read_json, run_cli  # noqa: E402,F401

from lowbit.cli.tune import parse_rows  # noqa: E402


def test_tune_decides_every_layer_and_writes_the_cache(tmp_path, capsys, cli_env):
    code, out, err = run_cli(capsys, "tune", "--model", "fixtures_models:tiny_mlp",
                             "--recipe", "w8a8", "--rows", "1,8", "--out", tmp_path / "t.json")
    assert code == 0, err
    data = read_json(tmp_path / "t.json")
    assert [x["layer"] for x in data["layers"]] == ["proj", "block", "head"]
    for layer in data["layers"]:  # both asked row counts are decided, nothing left open
        assert "rows 0-1" in layer["kernel"] and "rows 8-15" in layer["kernel"], layer
    assert data["rows"] == [1, 8]
    cache_file = Path(data["cache"])
    assert cache_file.is_file() and cache_file.parent == cli_env
    assert "cached in" in out and "proj" in out


def test_tune_reads_a_converted_checkpoint(tmp_path, capsys, cli_env):
    code, _, err = run_cli(capsys, "quantize", "--model", "fixtures_models:tiny_mlp",
                           "--recipe", "w8a16", "--out_dir", tmp_path / "q", "--report", "none")
    assert code == 0, err
    code, out, err = run_cli(capsys, "tune", "--model", "fixtures_models:tiny_mlp",
                             "--ckpt", tmp_path / "q" / "quantized", "--rows", "4")
    assert code == 0, err
    assert "rows 4-7" in out


@pytest.mark.parametrize("rows", ["", "a,b", "0", "4,-1", "2000000"])
def test_bad_rows_are_one_line_errors(rows, capsys, cli_env):
    code, _, err = run_cli(capsys, "tune", "--model", "fixtures_models:tiny_mlp",
                           "--recipe", "w8a8", "--rows", rows)
    assert_one_line_error(code, err, "--rows")


def test_parse_rows():
    assert parse_rows("1,32,4096") == (1, 32, 4096)


def test_a_model_without_quantized_linears_is_refused(capsys, cli_env):
    code, _, err = run_cli(capsys, "tune", "--model", "fixtures_models:no_quantizable_layer",
                           "--recipe", "w8a8", "--rows", "1")
    assert_one_line_error(code, err, "quantized linear")
