"""A small on-disk cache of trained example weights: safetensors files, never pickle.

Each entry is ``<cache_dir>/<name>-<key>.safetensors``. Its metadata holds the key and a
SHA-256 of the tensors' names, dtypes, shapes and bytes, so that a truncated, corrupted or
foreign file is detected on load (:func:`load_state`) and the caller can rebuild it. Writes are
atomic: a temporary file in the same folder is renamed over the entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

from lowbit.errors import CheckpointError

logger = logging.getLogger(__name__)

#: environment variable that moves the default cache folder
CACHE_ENV = "LOWBIT_CACHE"


def default_cache_dir() -> Path:
    """``$LOWBIT_CACHE`` if set, else ``~/.cache/lowbit`` (read at call time)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lowbit").expanduser()


def cache_key(**parts) -> str:
    """A short, stable hex digest of ``parts`` (JSON-serialisable values, order-independent)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:20]


def content_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode("utf-8"))
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_state(path: Path, state: dict[str, torch.Tensor], key: str,
               extra: dict[str, str] | None = None) -> None:
    """Write ``state`` to ``path`` atomically with the key and content digest in its metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}
    metadata = {"lowbit_cache_key": key, "content_sha256": content_digest(tensors), **(extra or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("cached %d tensors in %s", len(tensors), path)


def load_state(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a cache entry written by :func:`save_state`; return ``(tensors, metadata)``.

    Raises :class:`lowbit.errors.CheckpointError` when the file is missing, is not a readable
    safetensors file, belongs to another key, or its tensors do not match the stored digest.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"cache entry {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types, OSError, ValueError...
        raise CheckpointError(f"cache entry {path} cannot be read as safetensors: {exc}") from exc
    if metadata.get("lowbit_cache_key") != key:
        raise CheckpointError(f"cache entry {path} has key {metadata.get('lowbit_cache_key')!r}, "
                              f"expected {key!r}")
    if metadata.get("content_sha256") != content_digest(tensors):
        raise CheckpointError(f"cache entry {path} is corrupt: its tensors do not match the "
                              f"stored SHA-256")
    return tensors, metadata
