"""A small character-level language model whose sequence mixing is the Birman–Schwinger core.

Text: Python's own help topics (``pydoc_data.topics``, shipped with Python, no download),
joined in sorted topic order; characters map onto a fixed vocabulary (newline and printable
ASCII, everything else to one ``unknown`` id), so ids do not depend on the text.

Model (``h`` is (B, T, d_model), ``T = n_seq``)::

    h = embed(ids)
    per block:  v = potential(norm1(h))                  (B, T, H)  one potential per head
                G = core(v as (B·H, T))                  (B·H, T)   complex, causal core
                h = h + mix([Re G, Im G] as (B, T, 2H))  Linear 2H -> d_model
                h = h + fc2(gelu(fc1(norm2(h))))
    logits = head(norm(h))                               (B, T, vocab)

The cores are causal (:class:`BirmanSchwingerCore` with ``causal=True``), so the logits at
position ``t`` depend on ``ids[: t + 1]`` only; call :meth:`BirmanSchwingerLM.enforce_causal_`
after every optimizer step (:func:`train_lm` does). Every block's core sits under the attribute
``core``, so :func:`lowbit.zoo.birman_schwinger_quant.birman_schwinger_recipe` quantizes it.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import ConfigError, InputError, check_int_range

from .birman_schwinger import BirmanSchwingerCore

logger = logging.getLogger(__name__)

#: Id 0 is ``unknown``; then newline and the printable ASCII characters.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
VOCAB_SIZE = len(VOCAB) + 1
_INDEX = {ch: i + 1 for i, ch in enumerate(VOCAB)}


def encode_text(text: str) -> torch.Tensor:
    """Character ids (int64) of ``text``; characters outside :data:`VOCAB` become 0."""
    if not isinstance(text, str):
        raise InputError(f"encode_text takes a str, got {type(text).__name__}")
    return torch.tensor([_INDEX.get(ch, 0) for ch in text], dtype=torch.int64)


def decode_ids(ids: torch.Tensor) -> str:
    """Inverse of :func:`encode_text` (id 0 prints as ``?``)."""
    return "".join(VOCAB[i - 1] if i > 0 else "?" for i in ids.tolist())


def pydoc_text() -> str:
    """All of ``pydoc_data.topics`` joined in sorted topic order (ships with Python)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def text_splits(held_out: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_ids, test_ids)``: the help text's ids, the last ``held_out`` fraction held out."""
    if not isinstance(held_out, float) or not 0.0 < held_out < 1.0:
        raise ConfigError("held_out", held_out, "a float in (0, 1)", fix="e.g. held_out=0.1")
    ids = encode_text(pydoc_text())
    cut = int(len(ids) * (1.0 - held_out))
    return ids[:cut], ids[cut:]


class BirmanSchwingerBlock(nn.Module):
    """One block: the core mixes along the sequence (per head), an MLP mixes features."""

    def __init__(self, d_model: int, n_seq: int, n_heads: int, d_ff: int, epsilon: float,
                 seed: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.potential = nn.Linear(d_model, n_heads)
        self.core = BirmanSchwingerCore(n_seq, epsilon, seed=seed, causal=True)
        self.mix = nn.Linear(2 * n_heads, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, _ = h.shape
        v = self.potential(self.norm1(h))  # (B, T, H)
        v = v.transpose(1, 2).reshape(b * self.n_heads, t)  # (B·H, T)
        g = self.core(v).reshape(b, self.n_heads, t).transpose(1, 2)  # (B, T, H) complex
        h = h + self.mix(torch.cat([g.real, g.imag], dim=-1))  # (B, T, d)
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))


class BirmanSchwingerLM(nn.Module):
    """Character LM: (B, n_seq) ids -> (B, n_seq, VOCAB_SIZE) logits (module doc).

    Built from ``seed`` inside a forked RNG, so two models with the same arguments are equal
    and building one leaves PyTorch's global random state alone.
    """

    def __init__(self, n_seq: int = 128, d_model: int = 128, n_layers: int = 2,
                 n_heads: int = 64, d_ff: int = 256, epsilon: float = 1.0, seed: int = 0):
        super().__init__()
        for name, value, hi in (("n_seq", n_seq, 4096), ("d_model", d_model, 8192),
                                ("n_layers", n_layers, 64), ("n_heads", n_heads, 4096),
                                ("d_ff", d_ff, 65536), ("seed", seed, 2**31 - 1)):
            check_int_range(name, value, 0 if name == "seed" else 1, hi)
        self.n_seq = n_seq
        self.arch = dict(n_seq=n_seq, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                         d_ff=d_ff, epsilon=float(epsilon))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(VOCAB_SIZE, d_model)
            self.blocks = nn.ModuleList(
                BirmanSchwingerBlock(d_model, n_seq, n_heads, d_ff, epsilon, seed + 1 + i)
                for i in range(n_layers))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, VOCAB_SIZE)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype != torch.int64 or ids.dim() != 2 or ids.shape[1] != self.n_seq:
            raise InputError(f"BirmanSchwingerLM expects int64 ids of shape (B, {self.n_seq}), "
                             f"got {ids.dtype} {tuple(ids.shape)}; cut the text into windows "
                             f"of n_seq={self.n_seq} (see lm_windows)")
        h = self.embed(ids)  # (B, T, d)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))  # (B, T, V)

    def enforce_causal_(self) -> "BirmanSchwingerLM":
        """Zero the cores' upper-triangle weights (after each optimizer step)."""
        for module in self.modules():
            if isinstance(module, BirmanSchwingerCore):
                module.enforce_causal_()
        return self


def lm_windows(ids: torch.Tensor, n_seq: int, *, batch: int, n_batches: int | None = None,
               seed: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, targets)`` batches of (batch, n_seq) windows; targets are shifted by one.

    ``seed=None``: consecutive non-overlapping windows from the start (evaluation; all of them
    when ``n_batches`` is None). With a seed: ``n_batches`` batches of random windows.
    """
    check_int_range("n_seq", n_seq, 1, 1 << 20)
    check_int_range("batch", batch, 1, 1 << 20)
    span = len(ids) - n_seq - 1
    if span < 0:
        raise InputError(f"lm_windows: {len(ids)} ids are fewer than n_seq + 1 = {n_seq + 1}")
    if seed is None:
        starts = torch.arange(0, span + 1, n_seq)
        if n_batches is not None:
            starts = starts[: n_batches * batch]
    else:
        if n_batches is None:
            raise ConfigError("n_batches", None, "an integer with seed", fix="pass n_batches")
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, span + 1, (n_batches * batch,), generator=generator)
    offsets = torch.arange(n_seq + 1)
    out = []
    for i in range(0, len(starts), batch):
        window = ids[starts[i:i + batch, None] + offsets]  # (b, n_seq + 1)
        out.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))
    return out


def perplexity(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """``exp`` of the mean next-character cross-entropy over ``batches`` (eval, no grad)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, targets in batches:
            logits = model(inputs)
            total += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                           reduction="sum"))
            count += targets.numel()
    model.train(was_training)
    return math.exp(total / count)


def train_lm(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], *,
             lr: float = 3e-3, warmup: int = 50, clip: float = 1.0,
             on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """AdamW over ``batches`` with linear warm-up then cosine decay; returns the losses and
    leaves ``model`` in eval mode.

    Works on a float :class:`BirmanSchwingerLM` and on one prepared by lowbit (QAT: the
    fake-quant forward with straight-through gradients). Causality is restored after every
    step (:meth:`BirmanSchwingerLM.enforce_causal_` on the cores found in ``model``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("model", type(model).__name__, "a model with trainable parameters",
                          fix="set requires_grad=True on the weights to train")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = len(batches)
    cores = [m for m in model.modules() if isinstance(m, BirmanSchwingerCore)]
    losses = []
    model.train()
    for step, (inputs, targets) in enumerate(batches):
        scale = min(1.0, (step + 1) / max(1, warmup))
        scale *= 0.5 * (1.0 + math.cos(math.pi * step / max(1, steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        for core in cores:
            core.enforce_causal_()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


def load_lm(directory) -> BirmanSchwingerLM:
    """The float LM saved by ``benchmarks/train_bs_lm.py`` in ``directory``
    (``config.json`` + ``weights.safetensors``; float16 on disk, float32 in use)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        info = json.loads((directory / "config.json").read_text())
        tensors = load_file(str(directory / "weights.safetensors"))
    except (OSError, ValueError) as exc:
        raise InputError(f"load_lm: cannot read the LM saved in {directory} ({exc}); "
                         "run benchmarks/train_bs_lm.py --out DIR to create it") from None
    model = BirmanSchwingerLM(**info["arch"])
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return model.eval()
