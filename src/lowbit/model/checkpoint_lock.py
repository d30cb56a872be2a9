"""Serializing saves to one checkpoint directory, and what a save may delete.

Every save holds an exclusive ``flock`` on ``<directory>/.lowbit.lock`` for the whole
write-commit-clean-up sequence, so two saves to one directory run one after the other (the
last one wins, whole).  A load holds a shared lock on the same file when it exists and can be
opened, so it never sees a save half-way; where locks are unavailable (no ``fcntl``, a
read-only copy of a checkpoint) a load still sees the old or the new checkpoint whole, because
it reads the weights through one file descriptor and retries when the manifest changed under it
(:func:`lowbit.model.checkpoint_files.read_checkpoint`).

A save deletes only files it can prove lowbit wrote: the weights file the previous manifest
named, weights files called ``weights-<16 hex>.safetensors`` whose safetensors header carries
lowbit's ``format`` tag (orphans of an interrupted save), and temporaries called
``.weights-<32 hex>.tmp`` / ``.manifest-<32 hex>.tmp`` (left by a killed save; no other save
can be running while the lock is held).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: saves are not serialized across processes
    fcntl = None

from .migrations import FORMAT

LOCK = ".lowbit.lock"
WEIGHTS_NAME = re.compile(r"weights-[0-9a-f]{16}\.safetensors")
TEMP_NAME = re.compile(r"\.(weights|manifest)-[0-9a-f]{32}\.tmp")
_HEADER_LIMIT = 1 << 20  # bytes of safetensors header read to recognise lowbit's own files


@contextlib.contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the directory's save lock (creating the lock file, mode 0666 less the umask)."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def shared(directory: Path) -> Iterator[None]:
    """Hold the directory's lock shared while reading, when the lock file can be opened."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY)
    except OSError:  # no save ever locked here, or a read-only copy: read unlocked
        yield
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError:
                pass
        yield
    finally:
        os.close(fd)


def is_lowbit_weights(file: Path) -> bool:
    """Whether ``file`` is named and tagged like a weights file lowbit wrote."""
    if not WEIGHTS_NAME.fullmatch(file.name):
        return False
    try:
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > _HEADER_LIMIT:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == FORMAT


def previous_weights(directory: Path, manifest_name: str) -> str | None:
    """The weights file named by the manifest now in ``directory`` (None if none or invalid)."""
    try:
        manifest = json.loads((directory / manifest_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = manifest.get("weights_file") if isinstance(manifest, dict) else None
    if isinstance(manifest, dict) and manifest.get("format") == FORMAT and isinstance(name, str) \
            and Path(name).name == name and name:
        return name
    return None


def stale_files(directory: Path, keep: str, previous: str | None) -> list[Path]:
    """Files a save to ``directory`` (holding the lock, committed ``keep``) may delete."""
    out = []
    for entry in directory.iterdir():
        name = entry.name
        if name == keep:
            continue
        if TEMP_NAME.fullmatch(name) or name == previous or is_lowbit_weights(entry):
            out.append(entry)
    return out
