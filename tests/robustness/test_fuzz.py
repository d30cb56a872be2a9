"""Property-based fuzzing (hypothesis) of the two parsers that read untrusted files: the
checkpoint loader and the recipe parser.  Whatever the bytes, the result is a successful load or
a LowbitError: no other exception, no hang.

The CI run is bounded (about a minute on a busy 2-core machine); a longer run:

    LOWBIT_FUZZ_EXAMPLES=20000 python -m pytest tests/robustness/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (the dev extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lowbit.errors import LowbitError  # noqa: E402
from lowbit.model.checkpoint import MANIFEST, load, save  # noqa: E402
from lowbit.model.prepare import calibrate, prepare  # noqa: E402
from lowbit.recipe import Recipe, load_recipe  # noqa: E402

EXAMPLES = int(os.environ.get("LOWBIT_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, derandomize="LOWBIT_FUZZ_EXAMPLES" not in
                os.environ, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    model = prepare(_mlp(), "w8a8-static")
    with calibrate(model):
        model(torch.randn(2, 8))
    return save(model, tmp_path_factory.mktemp("fuzz") / "good")


def _copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def _load_or_lowbit_error(path: Path) -> None:
    try:
        load(path, _mlp())
    except LowbitError:
        pass


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
FIELDS = ["format", "format_version", "lowbit_version", "recipe", "backend", "stage", "layers",
          "records", "roles", "observers", "weights_file", "weights_sha256", "weights_bytes"]


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=3),
       drop=st.lists(st.sampled_from(FIELDS), max_size=2))
def test_fuzzed_manifest_fields_load_or_raise_a_lowbit_error(good_checkpoint, tmp_path, edits,
                                                            drop):
    path = _copy(good_checkpoint, tmp_path / "ckpt")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(edits)
    for key in drop:
        manifest.pop(key, None)
    (path / MANIFEST).write_text(json.dumps(manifest))
    _load_or_lowbit_error(path)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzzed_manifest_bytes_raise_a_lowbit_error(good_checkpoint, tmp_path, data):
    path = _copy(good_checkpoint, tmp_path / "ckpt")
    (path / MANIFEST).write_bytes(data)
    _load_or_lowbit_error(path)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=4000), flips=st.lists(
    st.tuples(st.integers(min_value=0, max_value=4000), st.integers(1, 255)), max_size=4),
    header=st.binary(max_size=64), trust_sha=st.booleans())
def test_fuzzed_weights_files_raise_a_lowbit_error(good_checkpoint, tmp_path, cut, flips, header,
                                                   trust_sha):
    """Corrupt the weights; with ``trust_sha`` the manifest's size and sha256 are rewritten to
    match, so the corrupt bytes reach safetensors itself."""
    import hashlib

    path = _copy(good_checkpoint, tmp_path / "ckpt")
    manifest = json.loads((path / MANIFEST).read_text())
    weights = path / manifest["weights_file"]
    data = bytearray(weights.read_bytes())
    for pos, xor in flips:
        if data:
            data[pos % len(data)] ^= xor
    data = bytes(header) + bytes(data[:cut]) if header else bytes(data[:max(cut, 0)])
    weights.write_bytes(data)
    if trust_sha:
        manifest.update(weights_bytes=len(data), weights_sha256=hashlib.sha256(data).hexdigest())
        (path / MANIFEST).write_text(json.dumps(manifest))
    _load_or_lowbit_error(path)


def _parse(fn, value) -> None:
    try:
        recipe = fn(value)
    except LowbitError:
        return
    assert isinstance(recipe, Recipe)


SPEC_KEYS = ["qtype", "scheme", "granularity", "method", "learnable", "dynamic", "frac_bits",
             "kind", "axis", "group_size", "types", "pattern", "role", "selector", "config",
             "weight", "act", "rules", "version", "name"]
RECIPE_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.sampled_from(
        ["int8", "int4", "uint8", "symmetric", "affine", "per_channel", "per_tensor", "minmax",
         "percentile", "type", "name", "role", "any", "Linear", "*", "proj", "", "int99"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(SPEC_KEYS), inner, max_size=4), max_leaves=20)


@FUZZ
@given(data=RECIPE_LIKE)
def test_fuzzed_recipe_documents_parse_or_raise_a_lowbit_error(data):
    _parse(load_recipe, {"version": 1, "name": "fuzz", "rules": data}
           if not isinstance(data, dict) else data)
    _parse(Recipe.from_json, json.dumps(data))


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzzed_recipe_text_raises_a_lowbit_error(text):
    _parse(Recipe.from_yaml, text + "\n")
    _parse(Recipe.from_json, text + "\n")
