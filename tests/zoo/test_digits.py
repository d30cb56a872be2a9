"""lowbit.zoo.digits: the digits split, the CNN's shape, training to >= 95 % and the weight cache."""

from __future__ import annotations

import json
import struct
import sys

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError, InputError
from lowbit.zoo import digits
from lowbit.zoo._cache import load_state
from lowbit.zoo._deps import MissingDependency
from lowbit.zoo.digits import (DigitsCNN, DigitsData, accuracy, calibration_batches,
                               digits_cache_path, load_digits_split, train_digits_cnn)

pytest.importorskip("sklearn", reason="the digits example needs scikit-learn (extra 'sklearn')")

N_SAMPLES = 1797  # scikit-learn's bundled digits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once for the whole module (a few seconds) into a private cache folder."""
    cache = tmp_path_factory.mktemp("digits_cache")
    model, data, acc = train_digits_cnn(seed=0, cache_dir=cache)
    return model, data, acc, cache


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Data


def test_split_has_the_documented_shapes_dtypes_and_range():
    data = load_digits_split(seed=0, test_fraction=0.25)
    n_test = round(N_SAMPLES * 0.25)
    assert data.x_train.shape == (N_SAMPLES - n_test, 1, 8, 8)
    assert data.x_test.shape == (n_test, 1, 8, 8)
    assert data.y_train.shape == (N_SAMPLES - n_test,) and data.y_test.shape == (n_test,)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    both = torch.cat([data.x_train, data.x_test])
    assert both.min() == 0.0 and both.max() == 1.0, "pixels 0..16 must be scaled to [0, 1]"
    assert set(data.y_test.tolist()) == set(range(10)), "every digit should appear in the test split"


def test_split_is_a_partition_of_the_bundled_data():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = load_digits_split(seed=3)
    labels = torch.cat([data.y_train, data.y_test])
    assert torch.equal(torch.bincount(labels, minlength=10),
                       torch.bincount(torch.as_tensor(bunch.target), minlength=10))
    pixels = torch.cat([data.x_train, data.x_test]).sum().double() * 16
    assert pixels.item() == float(bunch.images.sum()), "every image used exactly once"


def test_split_is_deterministic_per_seed():
    a, b, c = load_digits_split(seed=1), load_digits_split(seed=1), load_digits_split(seed=2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test), "a different seed must give a different split"


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, True, "0.25"])
def test_split_rejects_a_bad_test_fraction(bad):
    with pytest.raises(ConfigError, match=r"test_fraction=.*strictly between 0 and 1"):
        load_digits_split(test_fraction=bad)


def test_split_rejects_a_fraction_that_empties_a_split():
    with pytest.raises(ConfigError, match=r"test_fraction=1e-05 .*both splits non-empty"):
        load_digits_split(test_fraction=1e-5)


@pytest.mark.parametrize("bad", [-1, 1.0, "0"])
def test_split_rejects_a_bad_seed(bad):
    with pytest.raises(ConfigError, match=r"seed=.*an integer in \[0, "):
        load_digits_split(seed=bad)


def test_missing_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingDependency, match=r"scikit-learn.*pip install -c constraints.txt "
                                                r"-e \"\.\[sklearn\]\""):
        load_digits_split()


# ---------------------------------------------------------------------------------------------
# The model


def test_cnn_has_the_quantization_roles():
    torch.manual_seed(0)
    model = DigitsCNN()
    assert (model.proj.in_channels, model.proj.out_channels, model.proj.kernel_size) == (1, 16, (3, 3))
    dw, grouped = model.blocks[0].conv, model.blocks[1].conv
    assert dw.groups == dw.in_channels == dw.out_channels == 16, "block 0's 3x3 is depthwise"
    assert grouped.groups == 4 and grouped.kernel_size == (3, 3), "block 1's 3x3 is grouped"
    assert all(block.pw.kernel_size == (1, 1) for block in model.blocks), "pointwise 1x1 convs"
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 10
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_modules_are_registered_in_execution_order():
    torch.manual_seed(0)
    model = DigitsCNN()
    leaves = [name for name, m in model.named_modules() if not list(m.children())]
    executed: list[str] = []
    for name, module in model.named_modules():
        if name in leaves:
            module.register_forward_hook(lambda m, i, o, name=name: executed.append(name))
    model(torch.rand(2, 1, 8, 8))
    assert executed == leaves


# ---------------------------------------------------------------------------------------------
# Training and the cache


def test_trains_to_at_least_95_percent(trained):
    model, data, acc, _ = trained
    assert acc >= 95.0, f"float test accuracy {acc:.2f} % is below the promised 95 %"
    assert acc == accuracy(model, data.x_test, data.y_test), "returned accuracy is the test accuracy"
    assert not model.training, "the trained model is returned in eval mode"


def test_cache_is_a_safetensors_file_keyed_by_seed_and_epochs(trained):
    _, _, _, cache = trained
    path = digits_cache_path(seed=0, cache_dir=cache)
    assert path.is_file() and path.suffix == ".safetensors"
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])  # safetensors: 8-byte length, JSON header, bytes
    assert "head.weight" in header and "content_sha256" in header["__metadata__"]
    assert digits_cache_path(seed=1, cache_dir=cache) != path
    assert digits_cache_path(seed=0, epochs=3, cache_dir=cache) != path


def test_cache_is_reused_without_retraining(trained, monkeypatch):
    model, _, acc, cache = trained

    def no_training(*args, **kwargs):
        raise AssertionError("a valid cache entry must be reused, not retrained")

    monkeypatch.setattr(digits, "_fit", no_training)
    again, _, acc_again = train_digits_cnn(seed=0, cache_dir=cache)
    assert _same_state(_state(again), _state(model)) and acc_again == acc


def test_corrupt_bytes_are_detected_and_the_entry_rebuilt(trained, tmp_path, monkeypatch):
    _, _, _, cache = trained
    source = digits_cache_path(seed=0, cache_dir=cache)
    target = digits_cache_path(seed=0, cache_dir=tmp_path)
    raw = bytearray(source.read_bytes())
    raw[-3] ^= 0xFF  # flip bits in the last tensor's data; the header still parses
    target.write_bytes(bytes(raw))
    calls = []
    monkeypatch.setattr(digits, "_fit", lambda model, *a: calls.append(model))
    model, _, _ = train_digits_cnn(seed=0, cache_dir=tmp_path)
    assert len(calls) == 1, "a checksum mismatch must trigger retraining"
    assert target.read_bytes() != bytes(raw), "the corrupt entry must be rewritten"
    key = digits._digits_key(0, digits.DEFAULT_EPOCHS)
    assert _same_state(_state(model), load_state(target, key)[0]), "rewritten entry holds the model"


def test_truncated_entry_is_detected_and_retrained(trained, tmp_path, monkeypatch):
    _, _, _, cache = trained
    target = digits_cache_path(seed=0, cache_dir=tmp_path)
    target.write_bytes(digits_cache_path(seed=0, cache_dir=cache).read_bytes()[:100])
    calls = []
    monkeypatch.setattr(digits, "_fit", lambda model, *a: calls.append(model))
    train_digits_cnn(seed=0, cache_dir=tmp_path)
    assert len(calls) == 1, "an unreadable entry must trigger retraining"
    load_state(target, digits._digits_key(0, digits.DEFAULT_EPOCHS))  # now a valid entry


def test_training_is_deterministic_per_seed(tmp_path):
    first, _, acc = train_digits_cnn(seed=4, epochs=1, cache_dir=tmp_path / "a")
    second, _, acc_again = train_digits_cnn(seed=4, epochs=1, cache_dir=tmp_path / "b")
    assert _same_state(_state(first), _state(second)) and acc == acc_again
    other, _, _ = train_digits_cnn(seed=5, epochs=1, cache_dir=tmp_path / "a")
    assert not _same_state(_state(first), _state(other)), "the seed must matter"


def test_training_leaves_global_state_alone(trained):
    _, _, _, cache = trained
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    train_digits_cnn(seed=0, cache_dir=cache)
    digits_cache_path(seed=5, cache_dir=cache)
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads


def test_default_cache_dir_follows_lowbit_cache_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "c"))
    assert digits_cache_path().parent == tmp_path / "c"
    monkeypatch.delenv("LOWBIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert digits_cache_path().parent == tmp_path / ".cache" / "lowbit"


@pytest.mark.parametrize("field, kwargs", [("epochs", {"epochs": 0}), ("seed", {"seed": -3})])
def test_train_rejects_bad_arguments(tmp_path, field, kwargs):
    with pytest.raises(ConfigError, match=rf"{field}=.*an integer in"):
        train_digits_cnn(cache_dir=tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------------
# accuracy and calibration_batches


class _Oracle(nn.Module):
    """Predicts class 0 for inputs whose first pixel is 0, else class 1."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        p = (x.flatten(1)[:, 0] > 0).long()
        return nn.functional.one_hot(p, 2).float() + self.dummy


def test_accuracy_counts_correct_predictions_in_percent():
    x = torch.zeros(8, 1, 8, 8)
    x[4:, 0, 0, 0] = 1.0
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])  # predictions 0,0,0,0,1,1,1,1: 6 of 8 right
    model = _Oracle().train()
    assert accuracy(model, x, y, batch_size=3) == 75.0
    assert model.training, "accuracy must restore the training mode"


def test_accuracy_rejects_bad_inputs():
    model = _Oracle()
    with pytest.raises(InputError, match=r"one label per sample"):
        accuracy(model, torch.zeros(4, 1, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match=r"x is empty"):
        accuracy(model, torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"batch_size=0"):
        accuracy(model, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), batch_size=0)


@pytest.fixture(scope="module")
def data() -> DigitsData:
    return load_digits_split(seed=0)


def test_calibration_batches_come_from_the_train_split(data):
    batches = list(calibration_batches(data, n_batches=3, batch_size=16))
    assert len(batches) == 3 and all(b.shape == (16, 1, 8, 8) for b in batches)
    assert torch.equal(torch.cat(batches), data.x_train[:48])


def test_calibration_batches_wrap_around_the_train_split(data):
    n_train = data.x_train.shape[0]
    batch_size = n_train // 2 + 1
    batches = list(calibration_batches(data, n_batches=2, batch_size=batch_size))
    index = torch.arange(batch_size, 2 * batch_size) % n_train
    assert torch.equal(batches[1], data.x_train[index])


@pytest.mark.parametrize("kwargs, match", [
    ({"n_batches": 0, "batch_size": 4}, r"n_batches=0"),
    ({"n_batches": 2, "batch_size": 0}, r"batch_size=0"),
    ({"n_batches": 1, "batch_size": 100_000}, r"batch_size=100000 .*train split size"),
])
def test_calibration_batches_reject_bad_sizes_when_called(data, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        calibration_batches(data, **kwargs)  # raised at the call, not at the first next()
