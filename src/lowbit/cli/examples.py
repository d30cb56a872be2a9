"""What the CLI quantizes: a model SPEC turned into a model, calibration data and a score.

SPEC is a built-in example (``digits``, ``minilm``), ``hf:PATH`` (a local Hugging Face
directory: a causal LM is scored by perplexity on held-out pydoc text, an encoder by
mean-pooled embedding cosine to the float model) or
``module:function`` (the function returns a model, ``(model, calib_data)`` or
``(model, calib_data, eval_fn)`` where ``eval_fn(model) -> float``).
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from lowbit.errors import ConfigError

BUILTIN = ("digits", "minilm")


@dataclass
class Example:
    """A float model with its calibration batches and a scoring function."""

    spec: str
    model: nn.Module
    calib_data: list
    score: Callable[[nn.Module], float]   # higher is better
    metric: str                            # e.g. "accuracy_pct" or "cosine_to_float"
    default_recipe: str
    note: str = ""
    #: causal LMs only: perplexity of a model on a text (``lowbit eval --text FILE``)
    text_score: Callable[[nn.Module, str], float] | None = None


def _cosine_scorer(reference: nn.Module, batches: list) -> Callable[[nn.Module], float]:
    """Score = mean cosine between a model's outputs and the float reference's, per row."""
    from lowbit.model.batches import call_batch

    def outputs(model: nn.Module) -> torch.Tensor:
        with torch.inference_mode():
            outs = [_as_tensor(call_batch(model, b)).float() for b in batches]
        return torch.cat([o.reshape(o.shape[0], -1) for o in outs])

    ref = outputs(reference)

    def score(model: nn.Module) -> float:
        out = ref if model is reference else outputs(model)  # the reference is not run twice
        return float(torch.nn.functional.cosine_similarity(out, ref, dim=1).mean())

    return score


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for key in ("last_hidden_state", "logits"):
        if hasattr(out, key):
            return getattr(out, key)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError("model output", type(out).__name__, "a tensor (or a tuple starting with one)",
                      fix="wrap the model so that forward returns a tensor")


def digits(calib_batches: int = 8, seed: int = 0) -> Example:
    """The digits CNN (trained once, then cached); score = test accuracy in percent."""
    from lowbit.zoo.digits import accuracy, calibration_batches, train_digits_cnn

    model, data, _ = train_digits_cnn(seed=seed)
    calib = list(calibration_batches(data, calib_batches, 64))
    return Example("digits", model, calib,
                   lambda m: accuracy(m, data.x_test, data.y_test), "accuracy_pct", "w8a8-static",
                   "small CNN trained on scikit-learn's digits; score = test accuracy (%)")


def minilm(n_sentences: int = 128, calib_batches: int = 4) -> Example:
    """The bundled MiniLM-L6 encoder; score = mean embedding cosine to float."""
    from lowbit.zoo.minilm import load_minilm, pydoc_sentences, tokenize_batches

    model, tokenizer = load_minilm()
    batches = tokenize_batches(tokenizer, pydoc_sentences(n_sentences), batch_size=32)
    calib = tokenize_batches(tokenizer, pydoc_sentences(64, seed=1), batch_size=32)[:calib_batches]
    return Example("minilm", model, calib, _cosine_scorer(model, batches), "cosine_to_float",
                   "w8a8", f"MiniLM-L6 sentence encoder; score = mean embedding cosine to float "
                           f"over {n_sentences} pydoc sentences")


def _is_causal_lm(path: str) -> bool:
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or ())


def hf_causal_lm(path: str, calib: int = 8, calib_len: int = 128,
                 eval_tokens: int = 2048) -> Example:
    """A local Hugging Face causal LM (config.json names a ``*ForCausalLM``); score =
    perplexity on held-out pydoc text (lower is better), calibration on the other topics."""
    import os

    from lowbit.zoo._deps import require
    from lowbit.zoo.smollm2 import calibration_batches, perplexity, pydoc_split, token_ids

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = require("transformers", "--model hf:PATH")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.config.use_cache = False
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    held = token_ids(tokenizer, pydoc_split()[1])[:eval_tokens]

    def text_score(m: nn.Module, text: str) -> float:
        ids = token_ids(tokenizer, text)
        if ids.numel() < 2:
            raise ConfigError("--text", f"a text of {ids.numel()} token(s)", "at least 2 tokens",
                              fix="pass a longer text file")
        return perplexity(m, ids, 512)

    return Example(f"hf:{path}", model, calibration_batches(tokenizer, calib, calib_len),
                   lambda m: perplexity(m, held, 512), "perplexity", "w4a16-g64",
                   f"local Hugging Face causal LM; score = perplexity (lower is better) on "
                   f"{held.numel()} held-out pydoc tokens", text_score)


def hf_directory(path: str, n_sentences: int = 64) -> Example:
    """A local Hugging Face directory: a causal LM (scored by perplexity) or an encoder,
    mean pooled (scored by cosine to float)."""
    from lowbit.zoo.minilm import load_minilm, pydoc_sentences, tokenize_batches

    if _is_causal_lm(path):
        return hf_causal_lm(path)
    try:
        model, tokenizer = load_minilm(path)  # any local encoder directory, mean pooled
    except ConfigError as exc:
        raise ConfigError("--model", f"hf:{path}", f"hf:PATH with PATH {exc.allowed}",
                          fix=f"{exc.fix}; or use --model minilm for the bundled "
                              "all-MiniLM-L6-v2") from None
    batches = tokenize_batches(tokenizer, pydoc_sentences(n_sentences), batch_size=16)
    return Example(f"hf:{path}", model, batches[:2], _cosine_scorer(model, batches),
                   "cosine_to_float", "w8a8", "local Hugging Face encoder, mean pooled")


def from_function(ref: str) -> Example:
    """``module:function``: the function returns a model, ``(model, calib_data)`` or
    ``(model, calib_data, eval_fn)``."""
    module_name, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("--model", ref, "'digits', 'minilm', 'hf:PATH' or 'module:function'",
                          fix=f"check that {module_name!r} is importable and defines {attr!r} "
                              f"({exc})") from None
    out = fn()
    model, calib, score = (out, None, None) if isinstance(out, nn.Module) else (tuple(out) + (None,) * 2)[:3]
    if not isinstance(model, nn.Module) or calib is None:
        raise ConfigError("--model", ref, "a function returning (model, calib_data[, eval_fn])",
                          fix="return the float model together with a list of input batches")
    try:
        calib = list(calib)
    except TypeError:
        raise ConfigError("--model", ref, "a function returning (model, calib_data[, eval_fn]) "
                          "with calib_data a list of batches",
                          fix=f"{ref} returned calib_data of type {type(calib).__name__}; "
                              "return a list of input batches") from None
    if not calib:
        raise ConfigError("--model", ref, "a function returning at least one calibration batch",
                          fix=f"{ref} returned an empty calib_data; return a few "
                              "representative input batches") from None
    metric = "score"
    if score is None:
        score, metric = _cosine_scorer(copy.deepcopy(model), calib), "cosine_to_float"
    return Example(ref, model, calib, score, metric, "w8a8")


def load_example(spec: str) -> Example:
    """Resolve a model SPEC (see the module docstring)."""
    if spec == "digits":
        return digits()
    if spec == "minilm":
        return minilm()
    if spec.startswith("hf:"):
        return hf_directory(spec[3:])
    if ":" in spec:
        return from_function(spec)
    raise ConfigError("--model", spec, f"one of {BUILTIN}, 'hf:PATH' or 'module:function'",
                      fix="e.g. --model digits")
