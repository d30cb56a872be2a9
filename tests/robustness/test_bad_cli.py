"""Every CLI subcommand x bad values: exit status 2 and ONE ``lowbit: error:`` line, never a
traceback; nothing outside the output directory changes.

Runs in-process (``lowbit.cli.main.main``) on the tiny ``module:function`` model of
tests/cli/fixtures_models.py, so no example model is trained.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lowbit.cli.main import main

CLI_TESTS = Path(__file__).resolve().parents[1] / "cli"
TINY = "fixtures_models:tiny_mlp"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(CLI_TESTS))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "keep.txt").write_text("unrelated")
    (watched / "a_file").write_text("x")
    (watched / "latin1.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    (watched / "not_onnx.onnx").write_bytes(b"garbage")
    garbage = watched / "garbage_ckpt"
    garbage.mkdir()
    (garbage / "manifest.json").write_text("{not json")
    monkeypatch.chdir(watched)
    return watched


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file()}


OUT = "{out}"
CASES = [
    ("quantize-unknown-model", ["quantize", "--model", "nope", "--out_dir", OUT]),
    ("quantize-missing-module", ["quantize", "--model", "no_such_module:f", "--out_dir", OUT]),
    ("quantize-hf-missing", ["quantize", "--model", "hf:/no/such/folder", "--out_dir", OUT]),
    ("quantize-no-batches", ["quantize", "--model", "fixtures_models:no_batches",
                             "--out_dir", OUT]),
    ("quantize-not-a-model", ["quantize", "--model", "fixtures_models:not_a_model",
                              "--out_dir", OUT]),
    ("quantize-unknown-recipe", ["quantize", "--model", TINY, "--recipe", "w3a7",
                                 "--out_dir", OUT]),
    ("quantize-os-system", ["quantize", "--model", TINY, "--recipe", "os:system",
                            "--out_dir", OUT]),
    ("quantize-latin1-recipe", ["quantize", "--model", TINY, "--recipe", "latin1.yaml",
                                "--out_dir", OUT]),
    ("quantize-missing-recipe-file", ["quantize", "--model", TINY, "--recipe", "nope.yaml",
                                      "--out_dir", OUT]),
    ("quantize-out-dir-is-a-file", ["quantize", "--model", TINY, "--out_dir", "{file}"]),
    ("quantize-out-dir-too-long", ["quantize", "--model", TINY, "--out_dir", "{long}"]),
    ("quantize-negative-batches", ["quantize", "--model", TINY, "--quant_calib_batches", "-3",
                                   "--out_dir", OUT]),
    ("eval-missing-ckpt", ["eval", "--ckpt", "nope", "--model", TINY, "--out_dir", OUT]),
    ("eval-garbage-ckpt", ["eval", "--ckpt", "garbage_ckpt", "--model", TINY,
                           "--out_dir", OUT]),
    ("eval-ckpt-is-a-file", ["eval", "--ckpt", "a_file", "--model", TINY, "--out_dir", OUT]),
    ("export-missing-ckpt", ["export", "--model", TINY, "--ckpt", "nope", "--out",
                             OUT + "/m.onnx"]),
    ("export-out-is-a-dir", ["export", "--model", TINY, "--recipe", "w8a8", "--out", "{dir}"]),
    ("export-out-under-a-file", ["export", "--model", TINY, "--recipe", "w8a8", "--out",
                                 "{file}/m.onnx"]),
    ("export-bad-opset", ["export", "--model", TINY, "--recipe", "w8a8", "--opset", "99",
                          "--out", OUT + "/m.onnx"]),
    ("compare-unknown-recipe", ["compare", "--model", TINY, "--recipes", "w3a7",
                                "--out_dir", OUT]),
    ("compare-missing-ckpt", ["compare", "--model", TINY, "--ckpt", "nope", "--out_dir", OUT]),
]


@pytest.mark.parametrize("argv", [pytest.param(a, id=i) for i, a in CASES])
def test_a_bad_argument_is_one_line_and_exit_2(argv, env, tmp_path, capsys):
    if argv[0] == "export":
        pytest.importorskip("onnx")
    out = tmp_path / "out"
    values = {"out": str(out), "file": str(env / "a_file"), "dir": str(tmp_path),
              "long": str(tmp_path / ("x" * 300))}
    argv = [a.format(**values) for a in argv]
    before = _snapshot(env)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit status {code}, stderr: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("lowbit: error: "), err[-2000:]
    assert "Traceback" not in err
    assert _snapshot(env) == before, "no file outside the output directory changed"
    assert not [p for p in sys.modules if p == "no_such_module"]
