"""The ``Observer`` base class: a range finder with mergeable, checkpointable state.

An observer watches tensors (``update``), chooses a clipping range per block
(``clip_range``) and turns it into :class:`~lowbit.types.QParams` (``qparams``).
Its whole state is a dict of tensors (``state_dict``), so calibration can stop,
be saved with safetensors and resume, and observers that saw different shards of
the data can be combined (``merge``) as if one had seen everything.

Granularity is lowered with ``spec.granularity.block_size(x.shape)``; per-block
statistics are kept flat (one entry per block, in row-major block order) and
reshaped to the qparams' shape on the way out.  Two updates must agree on the
block layout up to singleton dimensions (``(1, C, 1, 1)`` and ``(C, 1)`` agree).

Subclasses implement ``_observe``, ``_merge_from``, ``_choose``, ``_state``,
``_load_state`` and, when their chosen range can clip, ``_outside_count``.

Across processes (:mod:`lowbit.distributed`) states combine without gathering them:
``reduce_ops`` says how each state entry reduces (``sum``, ``min``, ``max`` or
``mean:<weight key>``), and ``reduce_grid`` / ``align_grid`` let observers whose state
lives on a data-dependent grid (the histograms) agree on one grid first.  An observer
without ``_reduce_ops`` is combined by gathering states and calling ``merge``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch

from ..config import QuantSpec
from ..errors import CheckpointError, ConfigError, InputError, StateError
from ..primitives.affine import check_finite, qparams_from_range
from ..types import PerChannel, PerGroup, PerTensor, PerToken, QParams, Scheme, n_blocks

log = logging.getLogger(__name__)

ALL_GRANULARITIES = (PerTensor, PerChannel, PerGroup, PerToken)
_BASE_KEYS = ("n_seen", "stat_shape", "block_size", "fixed_outside")


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


def _to_json(t: torch.Tensor) -> float | list:
    """A per-block tensor as a float (one block) or a flat list (several)."""
    flat = t.detach().reshape(-1).double()
    return float(flat[0]) if flat.numel() == 1 else flat.tolist()


class Observer:
    """Base class of range finders; see the module docstring for the contract.

    ``spec`` gives the grid (qtype), scheme, granularity, frac_bits and the
    calibration method; subclasses read their parameters from
    ``spec.method_params``.
    """

    #: registry name, set by :func:`lowbit.observers.register_observer`
    method: ClassVar[str] = ""
    #: granularities this observer supports
    granularities: ClassVar[tuple[type, ...]] = ALL_GRANULARITIES

    def __init__(self, spec: QuantSpec):
        if not isinstance(spec, QuantSpec):
            raise ConfigError("spec", spec, "a lowbit.QuantSpec",
                              fix="pass QuantSpec(qtype=..., scheme=..., method=...)")
        if not isinstance(spec.granularity, self.granularities):
            allowed = ", ".join(f"{g.__name__}()" for g in self.granularities)
            raise ConfigError("QuantSpec.granularity", spec.granularity.to_dict(),
                              f"{allowed} with method={spec.method!r}",
                              fix="use PerTensor() for this method, or method='minmax', "
                                  "'moving_average' or 'mse' for per-channel/group/token ranges")
        self.spec = spec
        self.qtype = spec.qtype
        self.scheme = spec.scheme
        self.frac_bits = spec.frac_bits
        self.n_seen = 0                     # number of values observed
        self._fixed_outside = 0             # values outside a data-independent bound
        self._stat_shape: tuple[int, ...] | None = None
        self._block: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ public API

    def update(self, x: torch.Tensor) -> None:
        """Observe one tensor of any shape (NaN/Inf raise :class:`InputError`)."""
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{type(self).__name__}.update expects a torch.Tensor, got "
                             f"{type(x).__name__}; pass the activation or weight tensor")
        with torch.no_grad():
            xf = x.detach()
            if not xf.is_floating_point():
                xf = xf.float()
            self._check_finite(xf)
            if xf.dim() == 0:
                xf = xf.reshape(1)
            if xf.numel() == 0:
                log.debug("%s: skipped an empty tensor of shape %s", type(self).__name__,
                          tuple(xf.shape))
                return
            block = self.spec.granularity.block_size(tuple(xf.shape))
            stat_shape = n_blocks(tuple(xf.shape), block)
            if self._stat_shape is not None and _squeezed(stat_shape) != _squeezed(self._stat_shape):
                raise InputError(
                    f"{type(self).__name__}: a tensor of shape {tuple(xf.shape)} gives "
                    f"{stat_shape} blocks at {self.spec.granularity.to_dict()}, but earlier "
                    f"tensors gave {self._stat_shape}; feed tensors with the same block layout "
                    "(use PerTensor() or PerChannel for inputs whose shape varies)")
            self._observe(xf, block)
            bounds = self._fixed_bounds()
            if bounds is not None:
                lo, hi = bounds
                self._fixed_outside += int(((xf < lo) | (xf > hi)).sum())
            self._stat_shape, self._block = stat_shape, block
            self.n_seen += xf.numel()

    def merge(self, other: "Observer") -> None:
        """Fold ``other``'s observations into this observer (in place)."""
        if type(other) is not type(self):
            raise ConfigError("other", type(other).__name__, f"a {type(self).__name__}",
                              fix="merge observers of the same calibration method")
        if other.spec != self.spec or other._config() != self._config():
            raise ConfigError("other.spec", other.spec.to_dict() | other._config(),
                              f"the same spec and settings as this observer "
                              f"({self.spec.to_dict() | self._config()})",
                              fix="merge only observers built from the same QuantSpec")
        if other.n_seen == 0:
            return
        if self.n_seen == 0:
            self.load_state_dict(other.state_dict())
            return
        if _squeezed(other._stat_shape) != _squeezed(self._stat_shape):
            raise StateError(f"cannot merge observers with block layouts {self._stat_shape} "
                             f"and {other._stat_shape}; they watched differently shaped tensors")
        self._merge_from(other)
        self.n_seen += other.n_seen
        self._fixed_outside += other._fixed_outside

    def clip_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen ``(lo, hi)`` per block, shaped like the qparams.

        For FIXED_POINT specs this is the fixed grid's range ``[qmin, qmax] * 2**-frac_bits``.
        """
        self._require_data("clip_range")
        if self.scheme is Scheme.FIXED_POINT:
            lo, hi = self._fixed_bounds()
            shape = self._stat_shape
            return (torch.full(shape, lo, dtype=torch.float32),
                    torch.full(shape, hi, dtype=torch.float32))
        lo, hi = self._choose()
        return (lo.float().reshape(self._stat_shape), hi.float().reshape(self._stat_shape))

    def qparams(self) -> QParams:
        """QParams for the chosen range (``2**-frac_bits`` for FIXED_POINT)."""
        lo, hi = self.clip_range()
        return qparams_from_range(lo, hi, self.qtype, self.scheme, self._block, self.frac_bits)

    @property
    def sat_ratio(self) -> float:
        """Fraction of observed values outside the chosen range (0.0 before any data)."""
        if self.n_seen == 0:
            return 0.0
        outside = self._fixed_outside
        if self.scheme is not Scheme.FIXED_POINT:
            outside += self._outside_count()
        return float(min(outside, self.n_seen)) / self.n_seen

    def summary(self) -> dict[str, Any]:
        """JSON-able description: method, lo/hi, sat_ratio, n_seen (+ method extras)."""
        out: dict[str, Any] = {"method": self.spec.method, "n_seen": int(self.n_seen),
                               "lo": None, "hi": None, "sat_ratio": self.sat_ratio}
        if self.n_seen:
            lo, hi = self.clip_range()
            out["lo"], out["hi"] = _to_json(lo), _to_json(hi)
            out.update(self._summary_extra())
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All state as tensors (0-d for scalars), ready for safetensors."""
        empty = torch.zeros(0, dtype=torch.int64)
        state = {
            "n_seen": torch.tensor(self.n_seen, dtype=torch.int64),
            "stat_shape": empty if self._stat_shape is None
            else torch.tensor(self._stat_shape, dtype=torch.int64),
            "block_size": empty if self._block is None
            else torch.tensor(self._block, dtype=torch.int64),
            "fixed_outside": torch.tensor(self._fixed_outside, dtype=torch.int64),
        }
        for key, value in self._config().items():
            state[f"config.{key}"] = torch.tensor(value, dtype=torch.float64)
        for key, value in self._state().items():
            state[key] = value.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned, so calibration resumes exactly."""
        if not isinstance(state, dict):
            raise CheckpointError(f"{type(self).__name__}.load_state_dict expects a dict of "
                                  f"tensors from state_dict(), got {type(state).__name__}")
        expected = set(self.state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise CheckpointError(
                f"{type(self).__name__} state has missing keys {sorted(missing)} and unexpected "
                f"keys {sorted(unexpected)}; load a state saved by the same observer method")
        for key, value in self._config().items():
            saved = float(state[f"config.{key}"])
            if not math.isclose(saved, float(value), rel_tol=0.0, abs_tol=0.0):
                raise CheckpointError(f"{type(self).__name__} state was saved with {key}={saved} "
                                      f"but this observer has {key}={value}; build the observer "
                                      "with the same settings before loading")
        self.n_seen = int(state["n_seen"])
        self._fixed_outside = int(state["fixed_outside"])
        self._stat_shape = tuple(int(n) for n in state["stat_shape"]) if self.n_seen else None
        self._block = tuple(int(n) for n in state["block_size"]) if self.n_seen else None
        self._load_state({k: v.detach().clone() for k, v in state.items()
                          if k not in _BASE_KEYS and not k.startswith("config.")})

    def reduce_ops(self) -> dict[str, str] | None:
        """How each :meth:`state_dict` entry combines across processes so that the result
        equals :meth:`merge` of all of them: ``"sum"``, ``"min"``, ``"max"`` or
        ``"mean:<key>"`` (the average weighted by entry ``<key>``).  Entries not named
        (block layout, settings) must be equal on every process.  None: no such plan
        (combine by gathering states and merging)."""
        ops = self._reduce_ops()
        if ops is None:
            return None
        return {"n_seen": "sum", "fixed_outside": "sum", **ops}

    def reduce_grid(self) -> dict[str, int]:
        """The exponents of data-dependent grids this state lives on (empty: none).  Before
        a reduction every process moves to the largest with :meth:`align_grid`."""
        return {}

    def align_grid(self, grid: dict[str, int]) -> None:
        """Move the state onto the (wider or equal) grid ``grid`` exactly."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.spec.method!r}, n_seen={self.n_seen})"

    # ------------------------------------------------------------------ helpers

    def _require_data(self, what: str) -> None:
        if self.n_seen == 0:
            raise StateError(f"{type(self).__name__}.{what}() called before any data was "
                             "observed; call update(x) with calibration data first")

    def _check_finite(self, x: torch.Tensor) -> None:
        """Raise :class:`InputError` on NaN/Inf: one cheap pass, the exact count on failure."""
        if not bool(torch.isfinite(x.sum())):
            check_finite(x, f"input to the {self.method or type(self).__name__} observer")

    def _fixed_bounds(self) -> tuple[float, float] | None:
        """Data-independent bounds whose violations are counted at update time:
        the fixed-point grid, or ``[0, inf)`` for an unsigned SYMMETRIC grid."""
        if self.scheme is Scheme.FIXED_POINT:
            step = 2.0 ** -self.frac_bits
            return self.qtype.qmin * step, self.qtype.qmax * step
        if self.scheme is Scheme.SYMMETRIC and not self.qtype.signed:
            return 0.0, math.inf
        return None

    def _config(self) -> dict[str, float]:
        """Constructor settings beyond the spec (compared by merge, saved in state)."""
        return {}

    def _summary_extra(self) -> dict[str, Any]:
        return {}

    def _outside_count(self) -> float:
        """Observed values outside the chosen (data-dependent) range."""
        return 0.0

    def _reduce_ops(self) -> dict[str, str] | None:
        """The subclass's entries of :meth:`reduce_ops` (None: no reduction plan)."""
        return None

    # ------------------------------------------------------------------ subclass hooks

    def _observe(self, x: torch.Tensor, block: tuple[int, ...]) -> None:
        raise NotImplementedError

    def _merge_from(self, other: "Observer") -> None:
        raise NotImplementedError

    def _choose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat per-block ``(lo, hi)`` of the grid's chosen range."""
        raise NotImplementedError

    def _state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError
