"""Shared fixtures of the observer tests: quality-floor data sets and an SQNR table.

The quality fixtures hold 200k values drawn by inverse-CDF at the midpoints of
200k equal-probability strata ((k + 0.5) / N), shuffled with a fixed seed and
fed in 4 batches.  Plain random draws were not used for the floors because the
floors sit within a few tenths of a dB of the best achievable SQNR of their
distribution (ReLU-Gaussian on uint8: 46.03 dB at the MSE-optimal clip, Laplace on
int8: 35.23 dB), while 200k random draws move the achievable SQNR by about
+-0.4 dB from seed to seed: a floor would then test the seed, not the method.
Stratified values are deterministic and follow the distribution without that
sampling noise; the shuffle makes every batch representative.
"""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.observers import make_observer
from lowbit.primitives.affine import fake_quantize

N_QUALITY = 200_000
N_BATCHES = 4
METHODS = ("minmax", "percentile:99.99", "mse", "entropy", "auto")


def _stratified(kind: str, n: int, seed: int) -> torch.Tensor:
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    if kind == "laplace":                       # inverse CDF of Laplace(0, 1)
        x = -torch.sign(u - 0.5) * torch.log1p(-2.0 * (u - 0.5).abs())
    else:                                       # inverse CDF of N(0, 1)
        x = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
        if kind == "relu":
            x = x.clamp(min=0.0)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return x[perm].float()


#: fixture name -> (values, qtype)
QUALITY_FIXTURES = {
    "gauss_int8": ("gauss", "int8"),
    "laplace_int8": ("laplace", "int8"),
    "relu_uint8": ("relu", "uint8"),
    "gauss_int4": ("gauss", "int4"),
}


def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - xq)^2)``."""
    x, xq = x.double(), xq.double()
    return float(10.0 * torch.log10((x * x).sum() / ((x - xq) ** 2).sum()))


def calibrated_sqnr(method: str, x: torch.Tensor, qtype: str) -> tuple[float, object]:
    """Stream ``x`` through a SYMMETRIC per-tensor observer; SQNR of fake-quantizing ``x``."""
    obs = make_observer(QuantSpec(qtype=qtype, method=method))
    for batch in x.chunk(N_BATCHES):
        obs.update(batch)
    return sqnr_db(x, fake_quantize(x, obs.qparams())), obs


@pytest.fixture(scope="session")
def quality_table() -> dict[str, dict[str, float]]:
    """SQNR (dB) of every method in :data:`METHODS` on every quality fixture."""
    table: dict[str, dict[str, float]] = {}
    for seed, (name, (kind, qtype)) in enumerate(QUALITY_FIXTURES.items()):
        x = _stratified(kind, N_QUALITY, seed)
        table[name] = {m: calibrated_sqnr(m, x, qtype)[0] for m in METHODS}
    return table


@pytest.fixture(scope="session")
def sqnr():
    """The SQNR formula used by the floors."""
    return sqnr_db
