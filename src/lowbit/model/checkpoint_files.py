"""Checkpoint files: durable atomic writes, reading and verifying the manifest and weights.

:func:`read_checkpoint` is the one way in: it checks the manifest (format, version), the
weights file (name, size, sha256), reads it with safetensors (never unpickling), migrates
older versions and validates the current fields.  Every failure is a :class:`CheckpointError`
naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import FQ_IMPLS
from ..errors import CheckpointError
from .migrations import FORMAT, FORMAT_VERSION, migrate

MANIFEST = "manifest.json"
STAGES = ("prepared", "calibrated", "converted")
KINDS = ("qat", "quantized")

# ---------------------------------------------------------------------------- write

def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every OS can open a dir)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_durable(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())

# ---------------------------------------------------------------------------- read


def _read_manifest(directory: Path) -> dict:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory. Fix: pass the "
                              "directory lowbit.save wrote (it holds manifest.json)")
    file = directory / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; the directory is not a lowbit checkpoint or "
                              "its save never completed. Fix: pass a directory lowbit.save wrote")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc}). Fix: restore the manifest from "
                              "a backup or save the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{file}: format={found!r}, expected {FORMAT!r}; this is not a "
                              "lowbit checkpoint manifest. Fix: pass a directory lowbit.save wrote")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(f"{file}: format_version={version!r} is invalid: allowed an "
                              f"integer in [0, {FORMAT_VERSION}]. Fix: restore the manifest")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file}: format_version={version} is newer than this lowbit "
                              f"supports ({FORMAT_VERSION}); it was written by lowbit "
                              f"{manifest.get('lowbit_version')}. Fix: upgrade lowbit")
    return manifest


def _read_weights(directory: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """Check the weights file against the manifest (size, sha256), then read it safely."""
    name = manifest.get("weights_file")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CheckpointError(f"{directory / MANIFEST}: weights_file={name!r} is invalid: "
                              "allowed a file name inside the checkpoint directory. "
                              "Fix: restore the manifest")
    file = directory / name
    if not file.is_file():
        raise CheckpointError(f"{file}: weights file missing (named by {MANIFEST}). Fix: copy "
                              "the whole checkpoint directory, or save the model again")
    if manifest["format_version"] >= 1 or "weights_sha256" in manifest:
        size, expected = file.stat().st_size, manifest.get("weights_bytes")
        if size != expected:
            raise CheckpointError(f"{file}: {size} bytes but the manifest says {expected}; "
                                  "the file is truncated or corrupt. Fix: copy it again from "
                                  "the source, or save the model again")
        sha = sha256_file(file)
        if sha != manifest.get("weights_sha256"):
            raise CheckpointError(f"{file}: sha256 {sha[:16]}... does not match the manifest's "
                                  f"{str(manifest.get('weights_sha256'))[:16]}...; the file is "
                                  "corrupt. Fix: copy it again from the source, or save again")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: not a readable safetensors file ({exc}). Fix: copy it "
                              "again from the source, or save the model again") from None


def _validate(manifest: dict, file: Path) -> None:
    """Check the current fields' types (after migration)."""
    def bad(field: str, allowed: str) -> CheckpointError:
        return CheckpointError(f"{file}: {field}={manifest.get(field)!r} is invalid: allowed "
                               f"{allowed}. Fix: restore the manifest or save the model again")

    if manifest.get("stage") not in STAGES:
        raise bad("stage", f"one of {STAGES}")
    if manifest.get("fq_impl") not in FQ_IMPLS:
        raise bad("fq_impl", f"one of {FQ_IMPLS}")
    for field, kind in (("layers", dict), ("records", list), ("recipe", dict)):
        if not isinstance(manifest.get(field), kind):
            raise bad(field, f"a {kind.__name__}")
    for name, entry in manifest["layers"].items():
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS \
                or not isinstance(entry.get("config"), dict):
            raise CheckpointError(f"{file}: layers[{name!r}]={entry!r} is invalid: allowed "
                                  f"{{'module_type', 'kind': one of {KINDS}, 'config': {{...}}}}. "
                                  "Fix: restore the manifest or save the model again")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """The migrated (current-version) manifest and tensors of the checkpoint at ``path``.

    Validates the manifest, checks the weights file's size and sha256 and runs
    :func:`lowbit.model.migrations.migrate`; raises :class:`CheckpointError` naming the file.
    """
    directory = Path(path)
    manifest = _read_manifest(directory)
    tensors = _read_weights(directory, manifest)
    file = directory / MANIFEST
    try:
        manifest, tensors = migrate(manifest, tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    _validate(manifest, file)
    return manifest, tensors
