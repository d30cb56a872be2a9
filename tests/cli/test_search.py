"""``lowbit search``: the saved recipe loads and quantizes the model within the budget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_models import assert_one_line_error, cli_env, read_json, run_cli  # noqa: E402,F401

import lowbit  # noqa: E402

pytest.importorskip("matplotlib")


def test_search_writes_a_recipe_that_quantize_accepts(tmp_path, capsys, cli_env):
    code, out, err = run_cli(capsys, "search", "--model", "fixtures_models:tiny_mlp",
                             "--candidates", "float,w8a16", "--budget", "0.6x",
                             "--group", "proj,head", "--out_dir", tmp_path / "s")
    assert code == 0, err
    data = read_json(tmp_path / "s" / "search.json")
    assert data["cost_bytes"] <= data["budget_bytes"]
    assert data["assignment"]["proj"] == data["assignment"]["head"]
    recipe = lowbit.Recipe.from_yaml(tmp_path / "s" / "recipe.yaml")
    assert recipe.to_dict() == data["recipe"]
    assert (tmp_path / "s" / "pareto.png").is_file()
    assert "measured" in out
    code, _, err = run_cli(capsys, "quantize", "--model", "fixtures_models:tiny_mlp",
                           "--recipe", tmp_path / "s" / "recipe.yaml", "--out_dir",
                           tmp_path / "q")
    assert code == 0, err
    actions = {r["name"]: r["action"] for r in read_json(tmp_path / "q" / "records.json")}
    for name, cand in data["assignment"].items():
        assert actions[name] == ("float" if cand == "float" else "quantized")


@pytest.mark.parametrize("flags, needles", [
    (("--candidates", "w8a16", "--budget", "3 parsecs"), ("--budget",)),
    (("--candidates", "nope", "--budget", "0.5x"), ("--candidates",)),
    (("--candidates", "w8a16", "--budget", "10"), ("budget", "at least")),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, cli_env, flags, needles):
    code, _, err = run_cli(capsys, "search", "--model", "fixtures_models:tiny_mlp",
                           "--out_dir", tmp_path, *flags)
    assert_one_line_error(code, err, *needles)
