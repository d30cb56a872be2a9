"""A streaming histogram on a canonical power-of-two grid, with bounded memory.

The grid covers ``[0, R]`` (``signed=False``, for ``|x|`` or ReLU outputs) or
``[-R, R]`` (``signed=True``) with a fixed number of bins, where ``R = 2**exp``
is the smallest power of two holding every value seen.  When a value exceeds
``R`` the range doubles (as many times as needed) by merging adjacent bins, so
counts are never lost or split.  Because the grid depends only on the largest
value seen, two histograms that saw two streams merge into exactly the
histogram of one that saw both: bin edges are ``k * 2**(exp - log2 bins)`` and a
bin index is computed by scaling with a power of two, which is exact in float.
"""

from __future__ import annotations

import math

import torch

from ..errors import CheckpointError, ConfigError

MIN_EXP = -100        # range of an all-zero histogram: 2**-100
_CHUNK = 1 << 22      # values counted per call (float32 counts stay exact below 2**24)


def range_exponent(amax: float) -> int:
    """Smallest ``e >= MIN_EXP`` with ``amax <= 2**e``."""
    if amax <= 0.0:
        return MIN_EXP
    mant, exp = math.frexp(amax)          # amax = mant * 2**exp, 0.5 <= mant < 1
    return max(MIN_EXP, exp - 1 if mant == 0.5 else exp)


class Histogram:
    """Counts of values on ``[0, 2**exp]`` or ``[-2**exp, 2**exp]`` in ``bins`` equal bins.

    ``bins`` must be a power of two (so that bin width is a power of two).
    ``counts`` is float64 (exact integers up to 2**53).
    """

    def __init__(self, bins: int = 2048, signed: bool = False):
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 16 or bins & (bins - 1):
            raise ConfigError("bins", bins, "a power of two >= 16 (e.g. 1024, 2048, 4096)",
                              fix="pass bins=2048")
        self.bins = bins
        self.signed = bool(signed)
        self.exp: int | None = None            # None until the first value
        self.counts = torch.zeros(bins, dtype=torch.float64)

    # ------------------------------------------------------------------ geometry

    @property
    def center(self) -> int:
        """Index of the first bin at or above 0."""
        return self.bins // 2 if self.signed else 0

    @property
    def width(self) -> float:
        """Bin width (a power of two)."""
        span = 2.0 if self.signed else 1.0
        return span * 2.0 ** self.exp / self.bins

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper edge of every bin (float64)."""
        w = self.width
        idx = torch.arange(self.bins, dtype=torch.float64) - self.center
        return idx * w, (idx + 1) * w

    @property
    def total(self) -> float:
        """Number of values counted."""
        return float(self.counts.sum())

    # ------------------------------------------------------------------ streaming

    def add(self, x: torch.Tensor, amax: float) -> None:
        """Count ``x`` (float, finite; non-negative unless ``signed``); ``amax = max|x|``."""
        need = range_exponent(amax)
        if self.exp is None:
            self.exp = need
        elif need > self.exp:
            self.grow(need)
        flat = x.reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            self.counts += self._count(flat[start:start + _CHUNK]).double()

    def _count(self, x: torch.Tensor) -> torch.Tensor:
        """Counts of one chunk: bin ``floor(x / w)``, exact because ``w`` is a power of two
        (``x * (1/w)`` only shifts the exponent), counted with ``bincount``; a value equal
        to the top edge goes into the last bin, as in ``torch.histc``."""
        n = self.bins
        k = x.float() * (1.0 / self.width)              # exact; in [-n/2, n/2] or [0, n]
        idx = k.floor_().add_(self.center).to(torch.int64)   # exact small integers
        counts = torch.bincount(idx, minlength=n + 1).to(torch.float32).cpu()
        counts[n - 1] += counts[n]                      # the top edge belongs to the last bin
        return counts[:n]

    def grow(self, exp: int) -> None:
        """Double the range until it is ``2**exp``, merging bins (counts preserved exactly)."""
        k = exp - self.exp
        if k <= 0:
            return
        c = self.center
        old = torch.arange(self.bins, dtype=torch.int64) - c
        shift = min(k, 62)
        new = torch.div(old, 1 << shift, rounding_mode="floor") + c
        counts = torch.zeros_like(self.counts)
        counts.index_add_(0, new, self.counts)
        self.counts, self.exp = counts, exp

    def merge(self, other: "Histogram") -> None:
        """Add ``other``'s counts (re-binned onto the wider grid, exactly)."""
        if other.bins != self.bins or other.signed != self.signed:
            raise ConfigError("other histogram", (other.bins, other.signed),
                              f"bins={self.bins}, signed={self.signed}",
                              fix="merge histograms built with the same settings")
        if other.exp is None:
            return
        if self.exp is None:
            self.exp, self.counts = other.exp, other.counts.clone()
            return
        theirs = other.counts
        if other.exp < self.exp:
            tmp = Histogram(self.bins, self.signed)
            tmp.exp, tmp.counts = other.exp, other.counts.clone()
            tmp.grow(self.exp)
            theirs = tmp.counts
        else:
            self.grow(other.exp)
        self.counts = self.counts + theirs

    def folded(self) -> "Histogram":
        """The histogram of ``|x|`` (same bin width) from a signed histogram."""
        if not self.signed:
            return self
        out = Histogram(self.bins, signed=False)
        out.exp = self.exp + 1                          # [0, R] with the same width as [-R, R]
        c = self.center
        out.counts[:c] = self.counts[c:] + self.counts[:c].flip(0)
        return out

    # ------------------------------------------------------------------ state

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """Counts and range exponent as tensors under ``prefix`` (``exp < MIN_EXP``: empty)."""
        exp = MIN_EXP - 1 if self.exp is None else self.exp
        return {f"{prefix}counts": self.counts.clone(),
                f"{prefix}exp": torch.tensor(exp, dtype=torch.int64)}

    def load(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        """Restore what :meth:`state` returned."""
        counts = state[f"{prefix}counts"].double()
        if counts.shape != (self.bins,):
            raise CheckpointError(f"histogram state has {tuple(counts.shape)} bins but the "
                                  f"observer uses {self.bins}; build it with the same bins")
        exp = int(state[f"{prefix}exp"])
        self.exp = None if exp < MIN_EXP else exp
        self.counts = counts.clone()
