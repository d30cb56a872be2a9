"""lowbit.zoo.mobilenet_digits: data split, augmentation, architecture, committed weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import CheckpointError, ConfigError
from lowbit.zoo.digits import accuracy
from lowbit.zoo.mobilenet_digits import (N_CALIB, N_TEST, SIDE, MobileNetDigits, augment,
                                         load_mobilenet_digits, load_trained_mobilenet_digits,
                                         train_mobilenet_digits)

pytest.importorskip("sklearn", reason="the digits examples need scikit-learn")


def test_split_sizes_shapes_and_range():
    data = load_mobilenet_digits(views=2)
    assert data.x_train.shape == (1797 - N_CALIB - N_TEST, 1, SIDE, SIDE)
    assert data.x_calib.shape == (2 * N_CALIB, 1, SIDE, SIDE)
    assert data.x_test.shape == (2 * N_TEST, 1, SIDE, SIDE)
    assert data.y_test.shape == (2 * N_TEST,) and data.y_test.dtype == torch.int64
    for x in (data.x_train, data.x_calib, data.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0


def test_split_is_fixed_and_augmented_views_differ():
    a, b = load_mobilenet_digits(), load_mobilenet_digits()
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.x_calib, b.x_calib), \
        "calibration and test tensors must be the same on every call"
    first, second = a.x_test[:N_TEST], a.x_test[N_TEST:2 * N_TEST]
    assert torch.equal(a.y_test[:N_TEST], a.y_test[N_TEST:2 * N_TEST])
    assert not torch.allclose(first, second), "each view must have its own jitter"


def test_augment_is_seeded_and_moves_pixels():
    x = load_mobilenet_digits(views=1).x_train[:8]
    one = augment(x, torch.Generator().manual_seed(3))
    two = augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(one, two)
    assert (one - x).abs().mean() > 0.02, "augmentation should change the images visibly"


def test_architecture_has_depthwise_bn_relu6_and_no_conv_bias():
    model = MobileNetDigits()
    dws = [m for n, m in model.named_modules() if n.endswith(".dw")]
    assert len(dws) == 4 and all(m.groups == m.in_channels == m.out_channels for m in dws)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 9
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 9
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.rand(2, 1, SIDE, SIDE)).shape == (2, 10)


def test_committed_weights_load_and_classify_well(trained_mobilenet_digits):
    model, data = trained_mobilenet_digits
    assert not model.training
    acc = accuracy(model, data.x_test, data.y_test)
    assert 90.0 <= acc < 99.5, f"float test accuracy {acc:.2f} % is outside the expected band"


def test_committed_weights_have_the_folded_depthwise_imbalance(trained_mobilenet_digits):
    """The point of the model: some depthwise BN scales dwarf the median channel's."""
    model, _ = trained_mobilenet_digits
    worst = 0.0
    for block in model.blocks:
        bn = block.dw_bn
        s = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).abs()
        worst = max(worst, float(s.max() / s.median()))
    assert worst > 50.0


def test_loading_a_missing_or_foreign_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match="train_mobilenet_digits"):
        load_trained_mobilenet_digits(tmp_path / "absent.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="MobileNetDigits"):
        load_trained_mobilenet_digits(tmp_path / "foreign.safetensors")


def test_training_is_seeded_and_restores_the_global_generator():
    data = load_mobilenet_digits(views=1)
    small = type(data)(data.x_train[:64], data.y_train[:64], data.x_calib, data.y_calib,
                       data.x_test, data.y_test)
    state = torch.random.get_rng_state()
    a = train_mobilenet_digits(small, seed=1, epochs=1, batch_size=32)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_mobilenet_digits(small, seed=1, epochs=1, batch_size=32)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_bad_arguments_are_rejected():
    with pytest.raises(ConfigError, match="views"):
        load_mobilenet_digits(views=0)
