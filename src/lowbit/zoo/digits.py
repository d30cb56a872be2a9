"""A small CNN on scikit-learn's bundled handwritten digits: an example that needs no download.

``load_digits`` ships with scikit-learn (1797 grey 8x8 images of the digits 0-9, pixel values
0..16). :func:`train_digits_cnn` trains :class:`DigitsCNN` on it to about 97 % test accuracy in a
few seconds on one CPU thread and caches the weights as safetensors, so the ``lowbit demo``
command and the real-model tests start from a trained float model.

The network is shaped so that every quantization role of a recipe is present::

    proj      Conv2d 1->16 3x3                  the input projection (``--q_proj``)
    blocks.0  depthwise Conv2d 16->16 3x3, ReLU, pointwise Conv2d 16->32 1x1, ReLU, MaxPool
    blocks.1  grouped Conv2d 32->32 3x3 (4 groups), ReLU, pointwise Conv2d 32->32 1x1, ReLU, MaxPool
    head      Linear 128->10                    the output head (``--q_head``)

Modules are registered in the order they run, so ``named_modules()`` lists layers in execution
order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import CheckpointError, ConfigError, InputError, check_int_range

from ..runtime import eval_mode, one_thread
from ._cache import cache_key, default_cache_dir, load_state, save_state
from ._deps import require

logger = logging.getLogger(__name__)

#: bump when the training procedure changes, so that old cache entries are not reused
TRAINING_VERSION = 1
#: default number of training epochs (about 97 % test accuracy)
DEFAULT_EPOCHS = 12
_BATCH_SIZE = 64
_MAX_LR = 0.02
_MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class DigitsData:
    """The digits split into train and test parts.

    ``x_*`` are float32 tensors of shape (N, 1, 8, 8) with values in [0, 1]; ``y_*`` are int64
    class labels of shape (N,).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    """Load scikit-learn's bundled digits and split them with a permutation seeded by ``seed``.

    ``round(1797 * test_fraction)`` samples go to the test split, the rest to the train split.
    Pixels are divided by 16 so that they lie in [0, 1]. Needs scikit-learn (the ``sklearn``
    extra); the data themselves ship inside it.
    """
    check_int_range("seed", seed, 0, _MAX_SEED)
    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
            or not 0.0 < test_fraction < 1.0):
        raise ConfigError("test_fraction", test_fraction, "a number strictly between 0 and 1",
                          "pass e.g. test_fraction=0.25")
    datasets = require("sklearn.datasets", "the digits example (lowbit.zoo.digits)")
    bunch = datasets.load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)  # (N,)
    n_test = int(round(len(images) * test_fraction))
    if not 0 < n_test < len(images):
        raise ConfigError("test_fraction", test_fraction,
                          f"a fraction that leaves both splits non-empty ({len(images)} samples)",
                          "pass a value between 0.01 and 0.99")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    return DigitsData(images[train], labels[train], images[test], labels[test])


class DigitsBlock(nn.Module):
    """A 3x3 spatial conv (depthwise or grouped), ReLU, a 1x1 pointwise conv, ReLU, 2x2 max pool."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=groups)
        self.conv_act = nn.ReLU()
        self.pw = nn.Conv2d(in_channels, out_channels, 1)
        self.pw_act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H/2, W/2)."""
        return self.pool(self.pw_act(self.pw(self.conv_act(self.conv(x)))))


class DigitsCNN(nn.Module):
    """The digits classifier: input projection, two conv blocks, a Linear head (see module doc).

    Input (B, 1, 8, 8) in [0, 1]; output (B, 10) logits. Parameters are initialised from
    PyTorch's global generator like any ``nn.Module``; :func:`train_digits_cnn` seeds it.
    """

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(1, 16, 3, padding=1)
        self.proj_act = nn.ReLU()
        self.blocks = nn.ModuleList([
            DigitsBlock(16, 32, groups=16),  # depthwise: one 3x3 filter per channel
            DigitsBlock(32, 32, groups=4),
        ])
        self.flatten = nn.Flatten()
        self.head = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) -> (B, 10) logits."""
        x = self.proj_act(self.proj(x))  # (B, 16, 8, 8)
        for block in self.blocks:
            x = block(x)  # (B, 32, 4, 4), then (B, 32, 2, 2)
        return self.head(self.flatten(x))  # (B, 10)


def _check_positive(field: str, value, hi: int = 1_000_000) -> None:
    check_int_range(field, value, 1, hi)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in percent, evaluated in eval mode without grad.

    The model's training mode is restored afterwards. Inputs are moved to the model's device.
    """
    _check_positive("batch_size", batch_size)
    if x.shape[0] != y.shape[0] or y.dim() != 1:
        raise InputError(f"x has {x.shape[0]} samples and y has shape {tuple(y.shape)}; pass one "
                         f"label per sample (y of shape ({x.shape[0]},))")
    if x.shape[0] == 0:
        raise InputError("x is empty; pass at least one sample to measure accuracy")
    device = _model_device(model)
    correct = 0
    with eval_mode(model), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start:start + batch_size].to(device))  # (b, classes)
            labels = y[start:start + batch_size].to(logits.device)
            correct += int((logits.argmax(dim=-1) == labels).sum())
    return 100.0 * correct / x.shape[0]


def calibration_batches(data: DigitsData, n_batches: int,
                        batch_size: int = 32) -> Iterator[torch.Tensor]:
    """Yield ``n_batches`` input tensors (batch_size, 1, 8, 8) taken in order from the TRAIN split.

    The test split is never used, so calibration cannot leak test data. When more samples are
    asked for than the train split holds, the batches wrap around to its start (logged once).
    Arguments are checked here, before the first batch is drawn.
    """
    _check_positive("n_batches", n_batches)
    _check_positive("batch_size", batch_size)
    n_train = data.x_train.shape[0]
    if batch_size > n_train:
        raise ConfigError("batch_size", batch_size, f"at most {n_train} (the train split size)",
                          f"pass batch_size <= {n_train}")
    if n_batches * batch_size > n_train:
        logger.info("calibration_batches: %d x %d samples exceed the %d train samples; "
                    "wrapping around", n_batches, batch_size, n_train)

    def batches() -> Iterator[torch.Tensor]:
        for i in range(n_batches):
            index = (torch.arange(batch_size) + i * batch_size) % n_train
            yield data.x_train[index]

    return batches()


def _fit(model: DigitsCNN, data: DigitsData, seed: int, epochs: int) -> None:
    """Train ``model`` in place: Adam with a one-cycle learning rate, cross-entropy, batch 64."""
    generator = torch.Generator().manual_seed(seed)
    n_train = data.x_train.shape[0]
    steps_per_epoch = -(-n_train // _BATCH_SIZE)
    optimizer = torch.optim.Adam(model.parameters(), lr=_MAX_LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=_MAX_LR,
                                                   total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n_train, generator=generator)
        total = 0.0
        for start in range(0, n_train, _BATCH_SIZE):
            index = order[start:start + _BATCH_SIZE]
            loss = F.cross_entropy(model(data.x_train[index]), data.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * index.numel()
        logger.debug("digits epoch %d/%d: train loss %.4f", epoch + 1, epochs, total / n_train)
    model.eval()


def digits_cache_path(seed: int = 0, epochs: int = DEFAULT_EPOCHS,
                      cache_dir: str | Path | None = None) -> Path:
    """Where :func:`train_digits_cnn` keeps the weights for this architecture, seed and epochs."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"digits_cnn-{_digits_key(seed, epochs)}.safetensors"


def _digits_key(seed: int, epochs: int) -> str:
    with torch.random.fork_rng(devices=[]):  # building a model draws from the global generator
        architecture = repr(DigitsCNN())
    return cache_key(architecture=architecture, seed=seed, epochs=epochs,
                     training=TRAINING_VERSION, batch_size=_BATCH_SIZE, max_lr=_MAX_LR,
                     test_fraction=0.25)


def train_digits_cnn(seed: int = 0, epochs: int = DEFAULT_EPOCHS,
                     cache_dir: str | Path | None = None) -> tuple[DigitsCNN, DigitsData, float]:
    """A trained :class:`DigitsCNN`, its data split and its float test accuracy (percent).

    Everything is seeded by ``seed`` (data split, initial weights, batch order); the caller's
    global random state is left as it was. Training runs on one CPU thread and takes a few
    seconds. The weights are cached as safetensors in ``cache_dir`` (default ``$LOWBIT_CACHE``
    or ``~/.cache/lowbit``) under a key hashed from the architecture, seed, epochs and training
    settings; a cached file is reused when it loads and its checksum matches, otherwise (missing,
    truncated, corrupt) the model is retrained and the file rewritten. The model is returned in
    eval mode on the CPU.
    """
    check_int_range("seed", seed, 0, _MAX_SEED)
    check_int_range("epochs", epochs, 1, 1000)
    data = load_digits_split(seed)
    key = _digits_key(seed, epochs)
    path = digits_cache_path(seed, epochs, cache_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
        try:
            state, _ = load_state(path, key)
            model.load_state_dict(state, strict=True)
            logger.info("digits CNN loaded from cache %s", path)
        except (CheckpointError, RuntimeError) as exc:
            if path.exists():
                logger.warning("digits CNN cache unusable (%s); retraining", exc)
            torch.manual_seed(seed)
            model = DigitsCNN()
            with one_thread():
                _fit(model, data, seed, epochs)
            save_state(path, model.state_dict(), key, {"seed": str(seed), "epochs": str(epochs)})
    model.eval()
    acc = accuracy(model, data.x_test, data.y_test)
    logger.info("digits CNN float test accuracy %.2f %%", acc)
    return model, data, acc
