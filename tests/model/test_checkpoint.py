"""Checkpoints: bit-identical round trips at every stage, resumable calibration, atomic saves,
every CheckpointError, and migration of the legacy v0 fixture (tests/fixtures/legacy_v0)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import CheckpointError, ConfigError, StateError
from lowbit.model.api import quantize_model
from lowbit.model.checkpoint import MANIFEST, OBSERVER_PREFIX, load, read_checkpoint, save
from lowbit.model.convert import convert
from lowbit.model.migrations import FORMAT_VERSION, MIGRATIONS, migrate
from lowbit.model.prepare import calibrate, lowbit_state, prepare
from lowbit.nn.qat import QuantConv2d, QuantLinear
from lowbit.nn.quantized import QuantizedLinear
from lowbit.compat import recipe_from_flags
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerChannel, PerTensor, Scheme, int4, int8

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LEGACY = FIXTURES / "legacy_v0"


def _module_from(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


legacy_model = _module_from(FIXTURES / "legacy_model.py")


def _mlp(seed: int = 0, hidden: int = 32, inputs: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 8))


def _batches(n: int, seed: int = 1, inputs: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, inputs, generator=g) for _ in range(n)]


def _calibrated(recipe="w8a8-static", seed: int = 0, data_seed: int = 1) -> nn.Module:
    model = prepare(_mlp(seed), recipe)
    with calibrate(model):
        for x in _batches(3, data_seed):
            model(x)
    return model


def _fresh(seed: int = 99) -> nn.Module:
    """A float instance with different weights: loading must overwrite all of them."""
    return _mlp(seed)


def _same_output(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a(x), b(x))


X = _batches(1, seed=7)[0]

# ---------------------------------------------------------------------------- round trips


def test_calibrated_fake_quant_round_trip_is_bit_identical_with_a_complete_manifest(tmp_path):
    model = _calibrated()
    save(model, tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / MANIFEST).read_text())
    weights = tmp_path / "ckpt" / manifest["weights_file"]
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["format"] == "lowbit-checkpoint" and manifest["format_version"] == FORMAT_VERSION == 3
    assert manifest["weights_file"] == f"weights-{sha[:16]}.safetensors", "name from content hash"
    assert (manifest["weights_sha256"], manifest["weights_bytes"]) == (sha, weights.stat().st_size)
    assert manifest["stage"] == "calibrated" and manifest["fq_impl"] == "reference"
    assert manifest["recipe"] == lowbit_state(model).recipe.to_dict()
    assert set(manifest["layers"]) == {"0", "2"}
    assert manifest["layers"]["0"]["kind"] == "qat"
    assert manifest["layers"]["0"]["module_type"] == "QuantLinear"
    assert {p for p in manifest["observers"]} == {"0.act_quantizer", "0.weight_quantizer",
                                                  "2.act_quantizer", "2.weight_quantizer"}

    loaded = load(tmp_path / "ckpt", _fresh())
    assert isinstance(loaded[0], QuantLinear) and isinstance(loaded[2], QuantLinear)
    assert _same_output(model, loaded, X), "a calibrated fake-quant model must reload bit-exactly"
    state = lowbit_state(loaded)
    assert state.calibrated and not state.converted
    assert [r.to_dict() for r in state.records] == [r.to_dict() for r in
                                                   lowbit_state(model).records]


def test_converted_w8a8_round_trip_is_bit_identical(tmp_path):
    model, _ = quantize_model(_mlp(), "w8a8", _batches(2))
    save(model, tmp_path)
    loaded = load(tmp_path, _fresh())
    assert isinstance(loaded[0], QuantizedLinear) and loaded[0].qdata.dtype == torch.int8
    assert torch.equal(loaded[0].qdata, model[0].qdata)
    assert lowbit_state(loaded).converted and lowbit_state(loaded).calibrated
    assert _same_output(model, loaded, X), "converted w8a8 must reload bit-exactly"


def test_converted_int4_group128_round_trip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    model, _ = quantize_model(nn.Sequential(nn.Linear(128, 16)), "w4a16-g128",
                              _batches(1, inputs=128))
    assert model[0].packed and model[0].qdata.dtype == torch.uint8, "int4 codes stored packed"
    save(model, tmp_path)
    torch.manual_seed(5)
    loaded = load(tmp_path, nn.Sequential(nn.Linear(128, 16)))
    assert torch.equal(loaded[0].qdata, model[0].qdata)
    x = _batches(1, seed=3, inputs=128)[0]
    assert _same_output(model, loaded, x), "converted int4 g128 must reload bit-exactly"


def test_learnable_lsq_scales_after_a_training_step_round_trip(tmp_path):
    spec_w = QuantSpec(qtype=int4, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0),
                       learnable=True)
    spec_a = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerTensor(),
                       learnable=True)
    recipe = Recipe((Rule(ByType(("Linear",)), LayerConfig(spec_w, spec_a)),), "lsq")
    model = _calibrated(recipe)
    before = model[0].weight_quantizer.scale.detach().clone()
    model(X).square().mean().backward()
    with torch.no_grad():  # one plain SGD step (torch.optim would import dynamo: seconds)
        for p in model.parameters():
            p -= 0.1 * p.grad
    assert not torch.equal(before, model[0].weight_quantizer.scale), "the step trained the scale"
    save(model, tmp_path)
    loaded = load(tmp_path, _fresh())
    assert isinstance(loaded[0].weight_quantizer.scale, nn.Parameter), "LSQ scale stays learnable"
    assert torch.equal(loaded[0].weight_quantizer.scale, model[0].weight_quantizer.scale)
    assert _same_output(model, loaded, X), "trained LSQ scales must reload bit-exactly"


def test_calibration_resumed_after_load_equals_uninterrupted_calibration(tmp_path):
    data = _batches(4, seed=11)
    data[0] = data[0] * 10  # the widest range is seen before the save: its state must survive

    def start():
        model = prepare(_mlp(), "w8a8-static")
        model.start_calibration()
        return model

    whole = start()
    with torch.no_grad():
        for x in data:
            whole(x)
    whole.end_calibration()

    part = start()
    with torch.no_grad():
        for x in data[:2]:
            part(x)
    save(part, tmp_path)
    assert json.loads((tmp_path / MANIFEST).read_text())["stage"] == "prepared"
    resumed = load(tmp_path, _fresh())
    assert resumed[0].act_quantizer.observing, "observers keep observing after load"
    with torch.no_grad():
        for x in data[2:]:
            resumed(x)
    resumed.end_calibration()
    assert _same_output(whole, resumed, X), "resumed calibration must equal uninterrupted"

    late = start()  # what forgetting the saved observer state would give
    with torch.no_grad():
        for x in data[2:]:
            late(x)
    late.end_calibration()
    assert not _same_output(whole, late, X), "the test data must make observer state matter"


def test_converting_a_loaded_calibrated_model_equals_converting_the_original(tmp_path):
    model = _calibrated()
    save(model, tmp_path)
    loaded = load(tmp_path, _fresh())
    assert _same_output(convert(model), convert(loaded), X)

# ---------------------------------------------------------------------------- atomic save


@pytest.mark.parametrize("fail_at", [1, 2], ids=["weights-replace", "manifest-replace"])
def test_a_crash_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, fail_at):
    old = _calibrated(data_seed=1)
    new = _calibrated(data_seed=2)
    assert not _same_output(old, new, X), "the two saves must differ for the test to mean much"
    save(old, tmp_path)
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(CheckpointError, match="cannot save.*simulated crash.*unchanged"):
        save(new, tmp_path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not list(tmp_path.glob(".*.tmp")), "temporary files are cleaned up"
    assert _same_output(old, load(tmp_path, _fresh()), X), "the old checkpoint survives bit-exactly"

    save(new, tmp_path)  # a later save commits and removes orphaned weight files
    assert len(list(tmp_path.glob("weights-*.safetensors"))) == 1
    assert _same_output(new, load(tmp_path, _fresh()), X)

# ---------------------------------------------------------------------------- errors


@pytest.fixture
def saved(tmp_path) -> Path:
    save(_calibrated(), tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _rewrite(path: Path, **changes) -> None:
    manifest = _manifest(path)
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


def _weights(path: Path) -> Path:
    return path / _manifest(path)["weights_file"]


def test_missing_directory_and_missing_manifest_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "nope")) + ".*no such"):
        load(tmp_path / "nope", _fresh())
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / MANIFEST)) + ": missing"):
        load(tmp_path, _fresh())


def test_manifest_that_is_not_json_or_not_lowbit_is_rejected(saved):
    file = re.escape(str(saved / MANIFEST))
    (saved / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=file + ": not valid JSON"):
        load(saved, _fresh())
    (saved / MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match=file + r": format='other', expected"):
        load(saved, _fresh())


def test_newer_or_invalid_format_version_is_rejected(saved):
    _rewrite(saved, format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match=r"newer than this lowbit supports.*upgrade lowbit"):
        load(saved, _fresh())
    _rewrite(saved, format_version="one")
    with pytest.raises(CheckpointError, match=r"format_version='one' is invalid"):
        load(saved, _fresh())


def test_invalid_manifest_fields_are_rejected(saved):
    _rewrite(saved, stage="trained")
    with pytest.raises(CheckpointError, match=r"stage='trained' is invalid: allowed one of"):
        load(saved, _fresh())


def test_weights_file_missing_or_outside_the_directory(saved):
    _weights(saved).unlink()
    with pytest.raises(CheckpointError, match=r"weights-.*safetensors: weights file missing"):
        load(saved, _fresh())
    _rewrite(saved, weights_file="../elsewhere.safetensors")
    with pytest.raises(CheckpointError, match=r"weights_file='../elsewhere.safetensors' is "
                                              "invalid"):
        load(saved, _fresh())


def test_truncated_weights_are_detected_by_size(saved):
    weights = _weights(saved)
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + r": \d+ bytes .*truncated"):
        load(saved, _fresh())


def test_a_flipped_byte_is_detected_by_sha256(saved):
    weights = _weights(saved)
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + r": sha256 .* corrupt"):
        load(saved, _fresh())


def test_unreadable_safetensors_with_a_matching_hash_is_rejected(saved):
    weights = _weights(saved)
    garbage = b"this is not safetensors" * 4
    weights.write_bytes(garbage)
    _rewrite(saved, weights_sha256=hashlib.sha256(garbage).hexdigest(),
             weights_bytes=len(garbage))
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + ": not a readable "
                                                                        "safetensors"):
        load(saved, _fresh())


def test_a_different_architecture_is_rejected_naming_keys(saved):
    with pytest.raises(CheckpointError, match=r"does not match the model: .*mismatch.*0\.weight"):
        load(saved, _mlp(hidden=24))
    extra = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.LayerNorm(8))
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['3\.bias', '3\.weight'\]"):
        load(saved, extra)


def test_a_layer_named_in_the_manifest_but_absent_from_the_model(saved):
    with pytest.raises(CheckpointError, match=r"layer '2' named in the manifest is not found"):
        load(saved, nn.Sequential(nn.Linear(16, 32)))
    with pytest.raises(CheckpointError, match=r"layer '0' was saved as a QuantLinear"):
        load(saved, nn.Sequential(nn.Conv1d(16, 32, 1), nn.ReLU(), nn.Conv1d(32, 8, 1)))


def test_load_needs_a_fresh_float_model(saved):
    with pytest.raises(StateError, match="needs the FLOAT model"):
        load(saved, _calibrated())
    with pytest.raises(ConfigError, match=r"model='str' is invalid: allowed a torch.nn.Module"):
        load(saved, "model")


def test_save_rejects_unprepared_models_files_and_non_json_records(tmp_path):
    with pytest.raises(StateError, match="has not been prepared"):
        save(_mlp(), tmp_path)
    with pytest.raises(ConfigError, match=r"model='int' is invalid"):
        save(3, tmp_path)
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(CheckpointError, match=re.escape(str(file)) + ": is a file"):
        save(_calibrated(), file)
    model = _calibrated()
    lowbit_state(model).records[0].metrics["tensor"] = torch.ones(1)
    with pytest.raises(CheckpointError, match=r"cannot be written as JSON"):
        save(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists(), "a failed save leaves nothing behind"

# ---------------------------------------------------------------------------- legacy v0


def _legacy_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(LEGACY, tmp_path / "legacy"))


def _fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 symmetric fake quantization by hand: clamp(round(x / s), -128, 127) * s."""
    return torch.clamp(torch.round(x * (1.0 / scale)), -128, 127) * scale


def test_the_legacy_v0_fixture_loads_with_proj_and_head_quantized_by_the_legacy_scales():
    torch.manual_seed(123)
    model = load(LEGACY, legacy_model.LegacyNet())
    assert isinstance(model.proj, QuantConv2d) and isinstance(model.head, QuantConv2d)
    assert type(model.block[0]) is nn.Conv2d and type(model.block[2]) is nn.Conv2d, \
        "q_block_linear=false keeps the block float"
    saved = load_file(str(LEGACY / "model.safetensors"))
    for name in ("proj", "head"):
        layer = model.get_submodule(name)
        assert torch.equal(layer.act_quantizer.scale.reshape(()), saved[f"{name}.a_scale"])
        assert torch.equal(layer.weight_quantizer.scale.reshape(-1), saved[f"{name}.w_scale"])
        assert not layer.weight_quantizer.zero_point.any(), "legacy scales are symmetric"
    records = {r.name: r for r in lowbit_state(model).records}
    assert {n: r.action for n, r in records.items()} == {
        "proj": "quantized", "block.0": "float", "block.2": "float", "head": "quantized"}
    assert "v0 checkpoint" in records["proj"].reason
    assert lowbit_state(model).calibrated and not lowbit_state(model).converted
    manifest, _ = read_checkpoint(LEGACY)
    assert manifest["migrated_from"] == 0 and manifest["format_version"] == FORMAT_VERSION
    assert manifest["stage"] == "calibrated"

    x = legacy_model.example_input(seed=5)
    h = F.conv2d(_fake_quant(x, saved["proj.a_scale"]),
                 _fake_quant(saved["proj.weight"], saved["proj.w_scale"].reshape(-1, 1, 1, 1)),
                 saved["proj.bias"])
    h = F.conv2d(F.relu(F.conv2d(h, saved["block.0.weight"], saved["block.0.bias"], padding=1)),
                 saved["block.2.weight"], saved["block.2.bias"])
    expected = F.conv2d(_fake_quant(h, saved["head.a_scale"]),
                        _fake_quant(saved["head.weight"],
                                    saved["head.w_scale"].reshape(-1, 1, 1, 1)),
                        saved["head.bias"])
    with torch.no_grad():
        assert torch.equal(model(x), expected), "the output is the legacy scales' fake-quant"


def test_a_migrated_model_saves_as_the_current_format_and_reloads_bit_exactly(tmp_path):
    model = load(LEGACY, legacy_model.LegacyNet())
    save(model, tmp_path)
    manifest = _manifest(tmp_path)
    assert manifest["format_version"] == FORMAT_VERSION and "migrated_from" not in manifest
    again = load(tmp_path, legacy_model.LegacyNet())
    x = legacy_model.example_input(seed=6)
    assert _same_output(model, again, x)


def test_the_fixture_script_reproduces_the_fixture_manifest(tmp_path):
    script = _module_from(FIXTURES / "make_legacy_v0.py")
    out = script.build(tmp_path / "v0")
    assert _manifest(out) == _manifest(LEGACY)
    assert set(load_file(str(out / "model.safetensors"))) == \
        set(load_file(str(LEGACY / "model.safetensors")))


def test_legacy_checkpoint_missing_a_scale_is_rejected(tmp_path):
    legacy = _legacy_copy(tmp_path)
    tensors = load_file(str(legacy / "model.safetensors"))
    del tensors["head.a_scale"]
    save_file(tensors, str(legacy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"manifest.json: format v0 manifest: tensor "
                                              r"'head.a_scale' is missing"):
        load(legacy, legacy_model.LegacyNet())


def test_legacy_checkpoint_with_bad_flags_or_roles_is_rejected(tmp_path):
    legacy = _legacy_copy(tmp_path)
    manifest = _manifest(legacy)
    _rewrite(legacy, config=dict(manifest["config"], quant_mode="int3"))
    with pytest.raises(CheckpointError, match=r"format v0 manifest: its flags are invalid "
                                              r"\(quant_mode='int3'"):
        load(legacy, legacy_model.LegacyNet())
    _rewrite(legacy, config=manifest["config"], roles={"nothing": "proj"})
    with pytest.raises(CheckpointError, match=r"layer 'nothing' \(role 'proj'\) has no "
                                              r"Linear/Conv weight"):
        load(legacy, legacy_model.LegacyNet())
    _rewrite(legacy, roles=manifest["roles"], format_version=-1)
    with pytest.raises(CheckpointError, match=r"format_version=-1 is invalid"):
        load(legacy, legacy_model.LegacyNet())


def test_migrate_leaves_a_current_manifest_alone_and_chains_known_versions():
    assert sorted(MIGRATIONS) == list(range(FORMAT_VERSION)), "every old version has a step"
    manifest = {"format": "lowbit-checkpoint", "format_version": FORMAT_VERSION}
    assert migrate(manifest, {}) == (manifest, {})
    with pytest.raises(CheckpointError, match=r"cannot be migrated.*upgrade lowbit"):
        migrate({"format_version": FORMAT_VERSION + 1}, {})
    with pytest.raises(CheckpointError, match=r"no migration from checkpoint format_version -2"):
        migrate({"format_version": -2}, {})


def test_observer_state_is_stored_under_the_reserved_prefix(tmp_path):
    model = _calibrated()
    save(model, tmp_path)
    tensors = load_file(str(_weights(tmp_path)))
    keys = {k for k in tensors if k.startswith(OBSERVER_PREFIX)}
    expected = {f"{OBSERVER_PREFIX}0.act_quantizer/{k}"
                for k in model[0].act_quantizer.observer.state_dict()}
    assert expected <= keys
    loaded = load(tmp_path, _fresh())
    assert loaded[0].act_quantizer.observer.n_seen == model[0].act_quantizer.observer.n_seen


def test_tied_weights_save_once_each_and_reload(tmp_path):
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    float_model[2].weight = float_model[0].weight  # tied
    model = prepare(float_model, "w8a16")
    with calibrate(model):
        model(X)
    save(model, tmp_path)
    fresh = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    fresh[2].weight = fresh[0].weight
    loaded = load(tmp_path, fresh)
    assert loaded[0].weight is loaded[2].weight, "the architecture's tie is kept"
    assert _same_output(model, loaded, X)


def test_modules_with_non_tensor_extra_state_cannot_be_saved(tmp_path):
    class Stateful(nn.Module):
        def get_extra_state(self):
            return {"step": 3}

        def set_extra_state(self, state):
            pass

    model = _mlp()
    model.append(Stateful())
    model = prepare(model, "w8a16")
    with pytest.raises(CheckpointError, match=r"state_dict entry '3._extra_state' is a dict"):
        save(model, tmp_path)


def _break_layer_kind(m):
    m["layers"]["0"]["kind"] = "float"


def _break_layer_config(m):
    m["layers"]["0"]["config"]["weight"]["qtype"] = "int99"


def _quantized_without_weight(m):
    m["layers"]["0"]["kind"] = "quantized"
    m["layers"]["0"]["module_type"] = "QuantizedLinear"
    m["layers"]["0"]["config"]["weight"] = None


def _break_record(m):
    m["records"][0]["colour"] = "red"


def _break_recipe(m):
    m["recipe"]["rules"] = "all"


def _break_observer(m):
    m["observers"]["0.act_quantizer"]["method"] = "mse"


def _foreign_observer(m):
    m["observers"]["9.act_quantizer"] = {"method": "minmax"}


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(fq_impl="cuda"), r"fq_impl='cuda' is invalid: allowed one of"),
    (lambda m: m.update(layers=[]), r"layers=\[\] is invalid: allowed a dict"),
    (lambda m: m.update(records={}), r"records=\{\} is invalid: allowed a list"),
    (_break_layer_kind, r"layers\['0'\]=.* is invalid: allowed"),
    (_break_layer_config, r"layers\['0'\].config is invalid \(qtype='int99'"),
    (_quantized_without_weight, r"layer '0' is 'quantized' without a weight spec"),
    (_break_record, r"recipe or records are invalid"),
    (_break_recipe, r"recipe or records are invalid"),
    (_break_observer, r"observer state for '0.act_quantizer' \(method 'mse'\) has no matching"),
    (_foreign_observer, r"observer state for '9.act_quantizer' .* has no matching"),
], ids=["fq_impl", "layers", "records", "layer-kind", "layer-config", "quantized-no-weight",
        "record", "recipe", "observer-method", "observer-path"])
def test_invalid_manifest_contents_are_rejected_naming_the_file(saved, edit, message):
    manifest = _manifest(saved)
    edit(manifest)
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=re.escape(str(saved)) + ".*" + message):
        load(saved, _fresh())


def test_observer_state_that_does_not_fit_its_observer_is_rejected(saved):
    weights = _weights(saved)
    tensors = load_file(str(weights))
    del tensors[f"{OBSERVER_PREFIX}0.act_quantizer/min_val"]
    save_file(tensors, str(weights))
    data = weights.read_bytes()
    _rewrite(saved, weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data))
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) +
                       r": observer '0.act_quantizer': .*missing keys \['min_val'\]"):
        load(saved, _fresh())


def test_a_dtype_mismatch_is_rejected(saved):
    with pytest.raises(CheckpointError, match=r"shape/dtype mismatch.*torch.float32, model "
                                              r"\(32, 16\) torch.float64"):
        load(saved, _fresh().double())


def _v0(tmp_path: Path, config: dict | None = None, roles: dict | None = None,
        tensors=None) -> Path:
    """A copy of the v0 fixture with its config/roles/tensors edited."""
    legacy = _legacy_copy(tmp_path)
    manifest = _manifest(legacy)
    if config is not None:
        manifest["config"] = config
    if roles is not None:
        manifest["roles"] = roles
    (legacy / MANIFEST).write_text(json.dumps(manifest))
    if tensors is not None:
        saved = load_file(str(legacy / "model.safetensors"))
        tensors(saved)
        save_file(saved, str(legacy / "model.safetensors"))
    return legacy


BASE_V0 = {"q_proj_head": True, "q_block_linear": False, "quant_bits": 8,
           "quant_mode": "dynamic", "calib_method": "maxabs"}


@pytest.mark.parametrize("config, roles, tensors, message", [
    ([1, 2], None, None, r"'config' is list, not a dict of flags"),
    (dict(BASE_V0, quant_backend="gpu"), None, None, r"config.quant_backend='gpu' is not one"),
    (dict(BASE_V0, colour=1), None, None, r"its flags are invalid \(config=\['colour'\]"),
    (None, ["proj"], None, r"'roles' is missing or not a dict"),
    (None, None, lambda t: t.update({"proj.w_scale": torch.ones(3)}),
     r"'proj.w_scale' has shape \(3,\) but 'proj.weight' has 8 output channels"),
    (None, None, lambda t: t.update({"proj.a_scale": torch.ones(2)}),
     r"'proj.a_scale' has shape \(2,\); a per-tensor activation scale has one element"),
    (dict(BASE_V0, quant_mode="fixed88"), None, None,
     r"'proj.w_scale' \(per output channel\) cannot serve the weight granularity"),
], ids=["config-type", "backend", "unknown-flag", "roles", "w_scale-shape", "a_scale-shape",
        "fixed88-per-channel"])
def test_invalid_legacy_checkpoints_are_rejected(tmp_path, config, roles, tensors, message):
    legacy = _v0(tmp_path, config, roles, tensors)
    with pytest.raises(CheckpointError, match=r"manifest.json: format v0 manifest: " + message):
        load(legacy, legacy_model.LegacyNet())


def test_a_fixed88_legacy_checkpoint_on_the_cpp_backend_loads_and_converts(tmp_path):
    def q88(t):
        for name in ("proj", "head"):
            t[f"{name}.a_scale"] = torch.tensor(1 / 256)
            t[f"{name}.w_scale"] = torch.full((t[f"{name}.weight"].shape[0],), 1 / 256)

    legacy = _v0(tmp_path, dict(BASE_V0, quant_mode="fixed88", quant_backend="cpp"), None, q88)
    model = load(legacy, legacy_model.LegacyNet())
    assert lowbit_state(model).fq_impl == "fused", "cpp meant PyTorch's fused fake-quant ops"
    assert model.proj.weight_quantizer.scale.shape == (1, 1), "one Q8.8 scale per tensor"
    assert model.proj.weight_quantizer.scale.item() == 1 / 256
    x = legacy_model.example_input(seed=2)
    assert _same_output(model, convert(model), x), "a migrated Q8.8 model converts bit-exactly"


def test_a_role_based_recipe_keeps_its_layers_and_roles_without_reselection(tmp_path):
    torch.manual_seed(0)
    x = legacy_model.example_input(seed=3)
    model = prepare(legacy_model.LegacyNet(), recipe_from_flags(q_head=True), example_inputs=x)
    with calibrate(model):
        model(x)
    save(model, tmp_path)
    loaded = load(tmp_path, legacy_model.LegacyNet())
    assert isinstance(loaded.head, QuantConv2d) and type(loaded.proj) is nn.Conv2d
    assert lowbit_state(loaded).roles.roles == lowbit_state(model).roles.roles == \
        legacy_model.ROLES, "roles come back as found by execution order"
    assert _same_output(model, loaded, x)


# ------------------------------------------------- format v1: one "backend" field for two things

pre_split = _module_from(FIXTURES / "make_pre_split.py")


@pytest.mark.parametrize("stage", ["calibrated", "quantized"])
def test_a_v1_checkpoint_written_before_the_backend_split_loads(stage):
    """The committed v1 checkpoints were saved with ``backend="native"`` (fused fake-quant);
    they load as ``fq_impl="fused"``, with records split into fq_impl / kernel_path."""
    folder, maker = FIXTURES / "pre_split", pre_split
    manifest, _ = read_checkpoint(folder / stage)
    assert manifest["migrated_from"] == 1 and manifest["fq_impl"] == "fused"
    assert "backend" not in manifest
    model = load(folder / stage, maker.small_mlp())
    state = lowbit_state(model)
    assert state.fq_impl == "fused"
    x = maker.calib_batches()[0]
    with torch.no_grad():
        y = model(x)
    assert y.shape == (8, 32) and torch.isfinite(y).all()
    if stage == "calibrated":  # the same model, calibrated now, computes the same outputs
        again = prepare(maker.small_mlp(), "w8a8-static", fq_impl="fused")
        with calibrate(again):
            for batch in maker.calib_batches():
                again(batch)
        assert _same_output(model, again, x)
    for record in state.records:
        if stage == "calibrated":
            assert record.fq_impl == "fused" and record.kernel_path is None
        else:
            assert record.kernel_path == "dense" and record.kernel is not None


def test_the_deprecated_backend_keyword_still_prepares():
    with pytest.warns(DeprecationWarning, match="fq_impl"):
        fq = prepare(_mlp(), "w8a8", backend="native")
    assert lowbit_state(fq).fq_impl == "fused"
    with pytest.raises(ConfigError, match="backend='gpu' is invalid"):
        with pytest.warns(DeprecationWarning):
            prepare(_mlp(), "w8a8", backend="gpu")
