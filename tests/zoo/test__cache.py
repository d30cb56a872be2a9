"""lowbit.zoo._cache: safetensors cache entries with a key and a content checksum."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import CheckpointError
from lowbit.zoo._cache import cache_key, content_digest, default_cache_dir, load_state, save_state


def _tensors():
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, -2])}


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = tmp_path / "sub" / "entry.safetensors"
    save_state(path, _tensors(), "k1", {"seed": "3"})
    tensors, metadata = load_state(path, "k1")
    assert tensors.keys() == _tensors().keys()
    assert all(torch.equal(tensors[k], v) for k, v in _tensors().items())
    assert metadata["seed"] == "3" and metadata["lowbit_cache_key"] == "k1"
    assert [p.name for p in path.parent.iterdir()] == ["entry.safetensors"], "no temp file left"


def test_load_rejects_missing_foreign_and_corrupt_entries(tmp_path):
    path = tmp_path / "entry.safetensors"
    with pytest.raises(CheckpointError, match=r"entry.safetensors does not exist"):
        load_state(path, "k1")
    save_state(path, _tensors(), "k1")
    with pytest.raises(CheckpointError, match=r"has key 'k1', expected 'k2'"):
        load_state(path, "k2")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"is corrupt: .*SHA-256"):
        load_state(path, "k1")
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match=r"cannot be read as safetensors"):
        load_state(path, "k1")


def test_digest_sees_names_shapes_dtypes_and_values():
    base = content_digest(_tensors())
    assert content_digest(_tensors()) == base
    for changed in ({"w": _tensors()["w"].reshape(3, 2)}, {"w": _tensors()["w"].double()},
                    {"w": _tensors()["w"] + 1}, {"v": _tensors()["w"]}):
        tensors = {"b": _tensors()["b"], **changed}
        assert content_digest(tensors) != base, changed


def test_cache_key_is_order_independent_and_value_sensitive():
    assert cache_key(a=1, b="x") == cache_key(b="x", a=1)
    assert cache_key(a=1, b="x") != cache_key(a=2, b="x")


def test_default_cache_dir_reads_the_environment_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.setenv("LOWBIT_CACHE", "~/x")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "x"
