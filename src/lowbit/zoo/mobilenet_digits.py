"""A MobileNet-style CNN on augmented, upsampled scikit-learn digits: a model where PTQ hurts.

The digits CNN of :mod:`lowbit.zoo.digits` loses nothing at W8A8.  This model has what makes
post-training quantization of real MobileNets hard: depthwise-separable convolutions, each
followed by BatchNorm and ReLU6.  Folding a BatchNorm into a depthwise convolution multiplies
each channel's 3x3 filter by ``gamma / sqrt(var + eps)``; channels whose input is (nearly)
constant get a tiny running variance and hence a huge folded filter, so one per-tensor weight
scale crushes the other channels to a few integer levels.

Data (:func:`load_mobilenet_digits`): the 1797 8x8 digits are upsampled bilinearly to 16x16
and split once, by a permutation seeded with 0, into train (1197 images), calibration (200)
and test (400).  Calibration and test images are shown ``views`` times each (default 3) with
a fixed random affine jitter (rotation ±15°, shift ±1.5 px, scale 0.9-1.1) and Gaussian pixel
noise (σ 0.05), drawn from a generator seeded per split, so every machine sees the same
tensors; training draws fresh jitter every epoch.

Network (:class:`MobileNetDigits`), input (B, 1, 16, 16), output (B, 10) logits::

    stem      Conv2d 1->16 3x3, BN, ReLU6                           16x16
    blocks.i  depthwise Conv2d 3x3 (stride 1 or 2), BN, ReLU6,
              pointwise Conv2d 1x1, BN, ReLU6                       16->32, 32->64 /2,
                                                                    64->64, 64->128 /2
    pool      global average pool -> (B, 128)
    head      Linear 128->10

Convolutions before a BatchNorm have no bias (the BN's shift plays that role), as in
MobileNet.  Trained weights ship as ``mobilenet_digits.safetensors`` in this package
(:func:`load_trained_mobilenet_digits`), written by ``benchmarks/train_mobilenet_digits.py``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import CheckpointError, check_int_range

from ._deps import require

logger = logging.getLogger(__name__)

#: image side after upsampling
SIDE = 16
#: (calibration, test) sizes of the split; the rest (1197 images) is for training
N_CALIB, N_TEST = 200, 400
#: jitter of the augmentation
MAX_ROTATION_DEG, MAX_SHIFT_PX, SCALE_RANGE, NOISE_STD = 20.0, 2.0, (0.85, 1.15), 0.1
#: (in_channels, out_channels, depthwise stride) of the four depthwise-separable blocks
BLOCKS = ((16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2))
#: the committed weights, next to this file
WEIGHTS_FILE = Path(__file__).resolve().parent / "mobilenet_digits.safetensors"
_SPLIT_SEED = 0
_SEEDS = {"calib": 1, "test": 2}


@dataclass(frozen=True)
class MobileNetDigitsData:
    """The upsampled digits, split into train / calibration / test.

    ``x_train`` holds the clean upsampled training images (N, 1, 16, 16) in [0, 1]
    (training augments them on the fly with :func:`augment`); ``x_calib`` and ``x_test``
    are already augmented, fixed tensors.  ``y_*`` are int64 labels.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_calib: torch.Tensor
    y_calib: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random affine jitter and pixel noise per image (see the module doc), drawn from
    ``generator``.  x: (N, 1, H, W) in [0, 1]; returns the same shape, clamped to [0, 1]."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator)  # (N, 4) uniform draws
    angle = (u[:, 0] * 2 - 1) * math.radians(MAX_ROTATION_DEG)
    scale = SCALE_RANGE[0] + u[:, 1] * (SCALE_RANGE[1] - SCALE_RANGE[0])
    shift = (u[:, 2:] * 2 - 1) * (2 * MAX_SHIFT_PX / x.shape[-1])  # pixels -> [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    noise = torch.randn(out.shape, generator=generator) * NOISE_STD
    return (out + noise).clamp(0.0, 1.0)


def load_mobilenet_digits(views: int = 3) -> MobileNetDigitsData:
    """The fixed split of :class:`MobileNetDigitsData` (calibration and test images repeated
    ``views`` times with different fixed jitter).  Needs scikit-learn."""
    check_int_range("views", views, 1, 100)
    datasets = require("sklearn.datasets", "the MobileNet digits example")
    bunch = datasets.load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8)
    images = F.interpolate(images, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    test, calib, train = order[:N_TEST], order[N_TEST:N_TEST + N_CALIB], order[N_TEST + N_CALIB:]

    def fixed(index: torch.Tensor, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(_SEEDS[split])
        x = torch.cat([augment(images[index], gen) for _ in range(views)])
        return x, labels[index].repeat(views)

    x_calib, y_calib = fixed(calib, "calib")
    x_test, y_test = fixed(test, "test")
    return MobileNetDigitsData(images[train], labels[train], x_calib, y_calib, x_test, y_test)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1
             ) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU6()]


class SeparableBlock(nn.Module):
    """Depthwise 3x3 conv, BN, ReLU6, then pointwise 1x1 conv, BN, ReLU6 (MobileNetV1)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.dw, self.dw_bn, self.dw_act = _conv_bn(c_in, c_in, 3, stride, groups=c_in)
        self.pw, self.pw_bn, self.pw_act = _conv_bn(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H/stride, W/stride)."""
        x = self.dw_act(self.dw_bn(self.dw(x)))
        return self.pw_act(self.pw_bn(self.pw(x)))


class MobileNetDigits(nn.Module):
    """The MobileNet-style digits classifier (see the module doc for the layer table)."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_bn, self.stem_act = _conv_bn(1, BLOCKS[0][0], 3)
        self.blocks = nn.ModuleList([SeparableBlock(*b) for b in BLOCKS])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(BLOCKS[-1][1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 16, 16) -> (B, 10) logits."""
        x = self.stem_act(self.stem_bn(self.stem(x)))  # (B, 16, 16, 16)
        for block in self.blocks:
            x = block(x)  # ... (B, 128, 4, 4)
        return self.head(self.flatten(self.pool(x)))  # (B, 10)


def load_trained_mobilenet_digits(path: str | Path | None = None) -> MobileNetDigits:
    """:class:`MobileNetDigits` with the committed trained weights (eval mode, CPU).

    path: another safetensors file with the same tensor names (default: the file shipped in
    this package).  Loading never unpickles."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"no MobileNet digits weights at {path}; run "
                              "benchmarks/train_mobilenet_digits.py to write them")
    model = MobileNetDigits()
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not hold MobileNetDigits weights ({exc}); "
                              "rewrite it with benchmarks/train_mobilenet_digits.py") from exc
    return model.eval()


def train_mobilenet_digits(data: MobileNetDigitsData, seed: int = 0, epochs: int = 12,
                           lr: float = 0.05, batch_size: int = 64,
                           progress: bool = False) -> MobileNetDigits:
    """Train a fresh :class:`MobileNetDigits` on ``data.x_train`` with fresh augmentation each
    epoch: AdamW with a one-cycle learning rate (peak ``lr``), cross-entropy, ``batch_size``.
    Seeded by ``seed`` (weights, batch order, jitter); the global random state is restored.
    Returns the model in eval mode.

    The high peak learning rate is deliberate: it leaves a few channels of the later blocks
    dead (their ReLU6 output is constant), so the depthwise convolutions after them see a
    constant input, their BatchNorm a near-zero running variance, and the folded filters of
    those channels are hundreds of times larger than the rest, as in real MobileNets."""
    check_int_range("seed", seed, 0, 2**31 - 1)
    check_int_range("epochs", epochs, 1, 10_000)
    check_int_range("batch_size", batch_size, 1, 1 << 20)
    n = data.x_train.shape[0]
    steps = epochs * -(-n // batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MobileNetDigits()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        epochs_iter = range(epochs)
        if progress:
            from tqdm import tqdm

            epochs_iter = tqdm(epochs_iter, desc="epochs", unit="epoch")
        model.train()
        for epoch in epochs_iter:
            x_all = augment(data.x_train, gen)
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, batch_size):
                index = order[start:start + batch_size]
                loss = F.cross_entropy(model(x_all[index]), data.y_train[index])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * index.numel()
            logger.info("mobilenet digits epoch %d/%d: loss %.4f", epoch + 1, epochs, total / n)
    return model.eval()
