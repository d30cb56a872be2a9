"""Checkpoint format migrations: older manifests and tensors are brought up to date on load.

Each entry of :data:`MIGRATIONS` maps a format version ``v`` to a function taking and
returning ``(manifest, tensors)`` at version ``v + 1``; :func:`migrate` applies them in order
up to :data:`FORMAT_VERSION` and records the version it started from as ``migrated_from``.
Migrations work on plain data (a JSON dict and a dict of tensors) and never touch a model.

Format v3 (current) is described in :mod:`lowbit.model.checkpoint`.  v2 had no ``tied`` map
(every key stored its own tensor; see :func:`v2_to_v3`); v1 differed from v2 only in one
``backend`` field (see :func:`v1_to_v2`).  v0, the role-flag checkpoints with legacy
``a_scale``/``w_scale`` tensors, is migrated by :mod:`lowbit.compat.checkpoint_v0`, which
registers itself here with :func:`register_migration` (``import lowbit`` does that).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from ..errors import CheckpointError
from ..records import upgrade_record_dict

logger = logging.getLogger(__name__)

FORMAT = "lowbit-checkpoint"
#: The format version :func:`lowbit.model.checkpoint.save` writes and every migration reaches.
FORMAT_VERSION = 3

Tensors = dict[str, torch.Tensor]


def v1_to_v2(manifest: dict, tensors: Tensors) -> tuple[dict, Tensors]:
    """v1 had one ``backend`` field for two things; v2 names them apart: the manifest's
    ``backend`` (``reference``/``native``) becomes ``fq_impl`` (``reference``/``fused``), and
    each record's ``backend`` becomes ``fq_impl`` or, after convert, ``kernel_path``."""
    new = dict(manifest)
    backend = new.pop("backend", "reference")
    new["fq_impl"] = {"native": "fused"}.get(backend, backend)
    records = new.get("records")
    if isinstance(records, list):
        new["records"] = [upgrade_record_dict(r) if isinstance(r, dict) else r
                          for r in records]
    new["format_version"] = 2
    return new, tensors


def v2_to_v3(manifest: dict, tensors: Tensors) -> tuple[dict, Tensors]:
    """v3 stores a tensor shared by two keys once and maps the second key to the first
    (``tied``); a v2 checkpoint stored every key apart, so its map is empty."""
    new = dict(manifest)
    new["tied"] = {}
    new["format_version"] = 3
    return new, tensors


Migration = Callable[[dict, Tensors], tuple[dict, Tensors]]

#: format version -> the function bringing a checkpoint of that version to the next.
MIGRATIONS: dict[int, Migration] = {1: v1_to_v2, 2: v2_to_v3}


def register_migration(version: int, step: Migration) -> Migration:
    """Register ``step`` as the migration from format ``version`` to ``version + 1``."""
    assert 0 <= version < FORMAT_VERSION, version
    MIGRATIONS[version] = step
    return step


def migrate(manifest: dict, tensors: Tensors) -> tuple[dict, Tensors]:
    """Apply :data:`MIGRATIONS` in order up to :data:`FORMAT_VERSION`.

    Returns the migrated ``(manifest, tensors)``; a manifest that was migrated gets
    ``migrated_from`` (its original version).  A current manifest is returned unchanged.
    """
    start = version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"format_version={version!r} cannot be migrated: supported "
                              f"versions are 0..{FORMAT_VERSION}. Fix: upgrade lowbit")
    while version < FORMAT_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise CheckpointError(f"no migration from checkpoint format_version {version}; "
                                  f"supported versions are {sorted(MIGRATIONS)} and "
                                  f"{FORMAT_VERSION}. Fix: re-save the model with this lowbit")
        manifest, tensors = step(manifest, tensors)
        assert manifest["format_version"] == version + 1, f"migration {version} went astray"
        version = manifest["format_version"]
        logger.info("migrated a checkpoint from format_version %d to %d", version - 1, version)
    if start != version:
        manifest = dict(manifest, migrated_from=start)
    return manifest, tensors
