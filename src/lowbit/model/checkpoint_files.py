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
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from ..config import FQ_IMPLS
from ..errors import CheckpointError
from . import checkpoint_lock
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


def write_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], manifest: dict) -> str:
    """Write ``tensors`` and ``manifest`` (completed with the weights fields) into
    ``directory`` atomically, under the directory's save lock; returns the weights file name.

    Weights to a temporary file (fsync, ``os.replace``), then the manifest likewise: replacing
    the manifest is the commit point.  Then the files :func:`checkpoint_lock.stale_files` proves
    lowbit wrote are removed.  Files get mode 0666 less the umask, like any file the user
    creates.  An ``OSError`` (read-only directory, full disk, ...) becomes a
    :class:`CheckpointError`; the previous checkpoint stays loadable.
    """
    try:
        json.dumps(manifest)  # checked before anything is written
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / MANIFEST}: the manifest cannot be written as "
                              f"JSON ({exc}). Fix: keep LayerRecord.metrics to numbers, "
                              "strings, lists and dicts") from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with checkpoint_lock.exclusive(directory):
            return _write_locked(directory, tensors, manifest)
    except SafetensorError as exc:  # safetensors reports its I/O errors (disk full) so
        raise CheckpointError(f"{directory}: cannot save the checkpoint there ({exc}); the "
                              "previous checkpoint, if any, is unchanged. Fix: save into a "
                              "writable directory with free space") from None
    except OSError as exc:
        raise CheckpointError(f"{directory}: cannot save the checkpoint there "
                              f"({exc.strerror or exc}); the previous checkpoint, if any, is "
                              "unchanged. Fix: save into a writable directory with free "
                              "space") from None


def _write_locked(directory: Path, tensors: dict[str, torch.Tensor], manifest: dict) -> str:
    previous = checkpoint_lock.previous_weights(directory, MANIFEST)
    tag = uuid.uuid4().hex
    tmp_weights = directory / f".weights-{tag}.tmp"
    tmp_manifest = directory / f".manifest-{tag}.tmp"
    try:
        fd = os.open(tmp_weights, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = os.fstat(fd).st_mode & 0o777  # 0666 less the umask
        os.close(fd)
        save_file(tensors, str(tmp_weights), metadata={"format": FORMAT})
        os.chmod(tmp_weights, mode)  # safetensors writes 0600
        with open(tmp_weights, "rb+") as f:
            os.fsync(f.fileno())
        sha = sha256_file(tmp_weights)
        weights = f"weights-{sha[:16]}.safetensors"
        manifest.update(weights_file=weights, weights_sha256=sha,
                        weights_bytes=tmp_weights.stat().st_size)
        text = json.dumps(manifest, indent=2)
        os.replace(tmp_weights, directory / weights)
        fsync_dir(directory)
        write_text_durable(tmp_manifest, text + "\n")
        os.replace(tmp_manifest, directory / MANIFEST)  # the commit point
        fsync_dir(directory)
    finally:
        for tmp in (tmp_weights, tmp_manifest):
            tmp.unlink(missing_ok=True)
    for stale in checkpoint_lock.stale_files(directory, weights, previous):
        stale.unlink(missing_ok=True)
    return weights

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
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{file}: not UTF-8 text ({exc}). Fix: restore the manifest from "
                              "a backup or save the model again") from None
    except OSError as exc:
        raise _unreadable(file, exc) from None
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
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


def _unreadable(file: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(f"{file}: cannot be read ({exc.strerror or exc}). Fix: make the "
                           "checkpoint readable (chmod a+r) or copy it somewhere readable")


def _read_weights(directory: Path, manifest: dict) -> dict[str, torch.Tensor]:
    """Check the weights file against the manifest (size, sha256), then read it safely.

    The bytes are read once, through one file descriptor, and the checks and safetensors run
    on those bytes, so a file replaced meanwhile cannot pass the check and then be read.
    """
    name = manifest.get("weights_file")
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise CheckpointError(f"{directory / MANIFEST}: weights_file={name!r} is invalid: "
                              "allowed a file name inside the checkpoint directory. "
                              "Fix: restore the manifest")
    file = directory / name
    try:
        with open(file, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CheckpointError(f"{file}: weights file missing (named by {MANIFEST}). Fix: copy "
                              "the whole checkpoint directory, or save the model again") from None
    except OSError as exc:
        raise _unreadable(file, exc) from None
    if manifest["format_version"] >= 1 or "weights_sha256" in manifest:
        size, expected = len(data), manifest.get("weights_bytes")
        if size != expected:
            raise CheckpointError(f"{file}: {size} bytes but the manifest says {expected}; "
                                  "the file is truncated or corrupt. Fix: copy it again from "
                                  "the source, or save the model again")
        sha = hashlib.sha256(data).hexdigest()
        if sha != manifest.get("weights_sha256"):
            raise CheckpointError(f"{file}: sha256 {sha[:16]}... does not match the manifest's "
                                  f"{str(manifest.get('weights_sha256'))[:16]}...; the file is "
                                  "corrupt. Fix: copy it again from the source, or save again")
    try:
        return load_bytes(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
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
    for field in ("roles", "observers"):
        if manifest.get(field) is not None and not isinstance(manifest[field], dict):
            raise bad(field, "a dict or null")
    for path, info in (manifest.get("observers") or {}).items():
        if not isinstance(info, dict):
            raise CheckpointError(f"{file}: observers[{path!r}]={info!r} is invalid: allowed "
                                  "{'method', 'n_observed', 'observing'}. Fix: restore the "
                                  "manifest or save the model again")
    for name, entry in manifest["layers"].items():
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS \
                or not isinstance(entry.get("config"), dict):
            raise CheckpointError(f"{file}: layers[{name!r}]={entry!r} is invalid: allowed "
                                  f"{{'module_type', 'kind': one of {KINDS}, 'config': {{...}}}}. "
                                  "Fix: restore the manifest or save the model again")


def _read_consistent(directory: Path, tries: int = 5) -> tuple[dict, dict[str, torch.Tensor]]:
    """Manifest and weights of one and the same save: when reading the weights fails and
    the manifest changed meanwhile (an unlocked save committed), read both again."""
    for attempt in range(tries):
        manifest = _read_manifest(directory)
        try:
            return manifest, _read_weights(directory, manifest)
        except CheckpointError:
            try:
                changed = _read_manifest(directory) != manifest
            except CheckpointError:
                changed = True
            if not changed or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """The migrated (current-version) manifest and tensors of the checkpoint at ``path``.

    Validates the manifest, checks the weights file's size and sha256 and runs
    :func:`lowbit.model.migrations.migrate`; raises :class:`CheckpointError` naming the file.
    """
    directory = Path(path)
    with checkpoint_lock.shared(directory):
        manifest, tensors = _read_consistent(directory)
    file = directory / MANIFEST
    try:
        manifest, tensors = migrate(manifest, tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    _validate(manifest, file)
    return manifest, tensors
