"""``TensorQuantizer``: fake quantization of one tensor, with a calibration life cycle.

States (see :attr:`TensorQuantizer.state`):

``uncalibrated``  a static spec that has seen no data; forward raises :class:`StateError`.
``observing``     calibration: forward feeds ``x`` to the observer (no grad) and returns ``x``
                  unchanged.
``frozen``        qparams held as buffers ``scale``/``zero_point`` (shaped as in
                  :class:`QParams`) and ``block_size``; forward fake-quantizes.  With
                  ``spec.learnable`` the ``scale`` is an ``nn.Parameter`` trained by LSQ.
``dynamic``       ``spec.dynamic``: qparams are chosen from every input at run time
                  (min/max, :func:`choose_qparams` semantics).
``fixed``         ``FIXED_POINT`` before freezing: the scale ``2**-frac_bits`` needs no data.

``fq_impl`` (how it computes): ``reference`` runs lowbit's own autograd
(:func:`affine.fake_quantize`, :func:`lsq_fake_quantize`); ``fused`` runs PyTorch's fused ops
(``torch.fake_quantize_per_{tensor,channel}_affine`` and their ``_learnable`` twins, whose
``grad_factor`` is LSQ's gradient scale ``g``).  Both use ``g = 1/sqrt(N · qmax)`` with ``N``
the number of elements per step, so they agree.  Where no fused op exists (per group, per
token) the quantizer runs the reference path and :attr:`fallback_reason` says why.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..config import QuantSpec, check_fq_impl
from ..errors import ConfigError, InputError, StateError
from ..observers import make_observer
from ..primitives.affine import EPS, choose_qparams, expand_param, fake_quantize, qparams_from_range
from ..primitives.lsq import lsq_fake_quantize, lsq_grad_scale
from ..types import PerChannel, PerTensor, QParams, Scheme

logger = logging.getLogger(__name__)

#: Granularities PyTorch has fused fake-quant ops for (registry: add a kind, not an if).
FUSED_GRANULARITIES = {PerTensor.kind: "per tensor kernel", PerChannel.kind: "per channel kernel"}


def fused_fallback_reason(spec: QuantSpec) -> str | None:
    """Why ``fq_impl='fused'`` cannot serve ``spec`` (None when it can)."""
    kind = spec.granularity.kind
    if kind in FUSED_GRANULARITIES:
        return None
    return (f"PyTorch has no fused fake-quant op for {kind} granularity "
            f"(only {', '.join(sorted(FUSED_GRANULARITIES))}); fq_impl='reference' instead")


def fit_qparams(scale: torch.Tensor, zero_point: torch.Tensor, shape: tuple[int, ...],
                block_hint: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Align stored qparams to a tensor of ``shape`` (numpy-style, trailing dims aligned).

    Returns ``(scale, zero_point, block_size)`` with the tensor's rank, so that qparams
    calibrated on ``[B, T, K]`` serve an input ``[B', K]`` when only their trailing dims
    vary.  ``block_hint`` is the block the qparams were made with (trailing dims aligned
    too): a dimension it cuts into ``ceil(n / b)`` blocks keeps it, which is how a ragged
    last group is told apart.  Raises :class:`InputError` when the shapes cannot be matched.
    """
    ndim = len(shape)
    if scale.dim() > ndim:
        extra = scale.dim() - ndim
        if any(n != 1 for n in scale.shape[:extra]):
            raise InputError(f"qparams of shape {tuple(scale.shape)} do not fit an input of "
                             f"shape {tuple(shape)}; feed inputs of the rank seen in "
                             "calibration or re-calibrate")
        scale = scale.reshape(scale.shape[extra:])
        zero_point = zero_point.reshape(zero_point.shape[extra:])
    elif scale.dim() < ndim:
        lead = (1,) * (ndim - scale.dim())
        scale = scale.reshape(lead + tuple(scale.shape))
        zero_point = zero_point.reshape(lead + tuple(zero_point.shape))
    hint = (0,) * (ndim - len(block_hint)) + tuple(block_hint)[max(0, len(block_hint) - ndim):]
    block = []
    for n, s, h in zip(shape, scale.shape, hint):
        if s > 1 and h > 0 and -(-n // h) == s:  # the stored block (possibly ragged) fits
            block.append(int(h))
            continue
        if s != 1 and (s == 0 or n % s):
            raise InputError(f"qparams of shape {tuple(scale.shape)} do not fit an input of "
                             f"shape {tuple(shape)}; feed inputs shaped like the calibration "
                             "data or re-calibrate")
        block.append(n // s if s else n)
    return scale, zero_point, tuple(block)


def _fixed_qparams(spec: QuantSpec, device=None) -> QParams:
    """The data-free qparams of a FIXED_POINT spec (0-d scale ``2**-frac_bits``)."""
    zero = torch.zeros((), device=device)
    return qparams_from_range(zero, zero, spec.qtype, spec.scheme, (), spec.frac_bits)


class TensorQuantizer(nn.Module):
    """Fake-quantizes one tensor as ``spec`` says, computed by ``fq_impl`` (``reference`` or
    ``fused``).

    The observer is kept out of ``state_dict`` (reach it through :attr:`observer`); the
    state_dict holds ``scale``, ``zero_point`` and ``block_size`` (empty until frozen), and
    loading a frozen state into a fresh quantizer freezes it.
    """

    def __init__(self, spec: QuantSpec, fq_impl: str = "reference"):
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise ConfigError("spec", spec, "a lowbit QuantSpec",
                              fix="pass QuantSpec(qtype=..., scheme=..., granularity=...)")
        self.spec = spec
        self.fq_impl = check_fq_impl(fq_impl)
        self.fallback_reason = fused_fallback_reason(spec) if fq_impl == "fused" else None
        if self.fallback_reason:
            logger.info("TensorQuantizer: %s", self.fallback_reason)
        self.enabled = True
        self.observing = False
        object.__setattr__(self, "_observer", None)  # not a submodule: kept out of state_dict
        self._n_observed = 0
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("zero_point", torch.empty(0, dtype=torch.int32))
        self.register_buffer("block_size", torch.empty(0, dtype=torch.int64))

    # ------------------------------------------------------------------ state

    @property
    def observer(self):
        """The calibration observer (None before :meth:`start_observing`)."""
        return self._observer

    @property
    def is_frozen(self) -> bool:
        """True once qparams are held (after :meth:`freeze` or loading a frozen state)."""
        return self.scale.numel() > 0

    @property
    def ready(self) -> bool:
        """True when forward can fake-quantize: frozen, dynamic or fixed point."""
        return self.is_frozen or self.spec.dynamic or self.spec.scheme is Scheme.FIXED_POINT

    @property
    def state(self) -> str:
        """One of ``observing``, ``frozen``, ``dynamic``, ``fixed``, ``uncalibrated``."""
        if self.observing:
            return "observing"
        if self.spec.dynamic:
            return "dynamic"
        if self.is_frozen:
            return "frozen"
        return "fixed" if self.spec.scheme is Scheme.FIXED_POINT else "uncalibrated"

    @property
    def uses_fused(self) -> bool:
        """True when forward runs PyTorch's fused fake-quant ops."""
        return self.fq_impl == "fused" and self.fallback_reason is None

    def start_observing(self, reset: bool = False) -> "TensorQuantizer":
        """Enter calibration: forward observes inputs and returns them unchanged.

        Observations accumulate across calls unless ``reset``.  Dynamic quantizers observe
        nothing (their qparams come from each input).
        """
        if not self.spec.dynamic and (self._observer is None or reset):
            object.__setattr__(self, "_observer", make_observer(self.spec))
            self._n_observed = 0
        self.observing = True
        return self

    def observe(self, x: torch.Tensor) -> None:
        """Feed ``x`` to the observer (no gradient), whatever the state."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError(f"TensorQuantizer.observe: x must be a floating-point tensor, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}; pass float activations")
        if self.spec.dynamic:
            return
        if self._observer is None:
            object.__setattr__(self, "_observer", make_observer(self.spec))
        with torch.no_grad():
            self._observer.update(x.detach())
        self._n_observed += 1

    def freeze(self, x: torch.Tensor | None = None) -> "TensorQuantizer":
        """Stop observing and hold the observer's qparams as buffers.

        With ``x`` (a known tensor such as a weight) the observer is reset and sees only
        ``x``.  Calling it again without new observations keeps the held (possibly trained)
        qparams.  Raises :class:`StateError` if a static spec never observed data.
        """
        if x is not None:
            object.__setattr__(self, "_observer", None)
            self._n_observed = 0
            self.observe(x)
        was_observing, self.observing = self.observing, False
        if self.spec.dynamic or (self.is_frozen and not was_observing and x is None):
            return self
        if self._has_data():
            qp = self._observer.qparams()
        elif self.spec.scheme is Scheme.FIXED_POINT:
            qp = _fixed_qparams(self.spec, self.scale.device)
        else:
            raise StateError(self._uncalibrated_message("freeze() found no observed data"))
        self.set_qparams(qp)
        return self

    def _has_data(self) -> bool:
        return self._observer is not None and self._observer.n_seen > 0

    def set_qparams(self, qp: QParams) -> None:
        """Hold ``qp`` (frozen state); ``scale`` becomes an ``nn.Parameter`` if learnable."""
        if not isinstance(qp, QParams):
            raise ConfigError("qparams", type(qp).__name__, "a lowbit QParams",
                              fix="pass the QParams returned by an observer or choose_qparams")
        if qp.qtype != self.spec.qtype:
            raise ConfigError("qparams.qtype", qp.qtype.name,
                              f"{self.spec.qtype.name} (the spec's)",
                              fix="compute the qparams for this quantizer's spec")
        device = self.zero_point.device  # the module's device (observers may work elsewhere)
        self._set_scale(qp.scale.detach().to(device, torch.float32).clone())
        self.zero_point = qp.zero_point.detach().to(device, torch.int32).clone()
        self.block_size = torch.tensor(qp.block_size, dtype=torch.int64, device=device)
        self.observing = False

    def _set_scale(self, scale: torch.Tensor) -> None:
        self._parameters.pop("scale", None)
        self._buffers.pop("scale", None)
        if self.spec.learnable and scale.numel():
            self.register_parameter("scale", nn.Parameter(scale))
        else:
            self.register_buffer("scale", scale)

    def _uncalibrated_message(self, what: str) -> str:
        return (f"TensorQuantizer({self.spec.qtype.name}, {self.spec.scheme.value}, "
                f"{self.spec.granularity.kind}) is not calibrated: {what}. Calibrate first: "
                "call start_observing(), run representative inputs through the model, then "
                "freeze() (lowbit's calibrate() does this), or use a dynamic spec")

    # ------------------------------------------------------------------ qparams

    def qparams(self, x: torch.Tensor | None = None) -> QParams:
        """The qparams in use: held ones when frozen, or chosen from ``x`` when dynamic."""
        if self.spec.dynamic:
            if x is None:
                raise StateError("a dynamic TensorQuantizer chooses qparams per input; "
                                 "call qparams(x) with the tensor to quantize")
            return self._dynamic_qparams(x)
        if self.is_frozen:
            scale = self.scale.detach()
            if self.spec.learnable:
                scale = scale.clamp(min=EPS)
            return QParams(scale.clone(), self.zero_point.clone(), self.spec.qtype,
                           tuple(int(b) for b in self.block_size.tolist()))
        if self.spec.scheme is Scheme.FIXED_POINT:
            return _fixed_qparams(self.spec, self.scale.device)
        raise StateError(self._uncalibrated_message("it holds no qparams"))

    def _dynamic_qparams(self, x: torch.Tensor) -> QParams:
        s = self.spec
        return choose_qparams(x, s.qtype, s.scheme, s.granularity, s.frac_bits)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe (calibration), pass through (disabled) or fake-quantize ``x``."""
        if self.observing:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        if self.spec.dynamic:
            qp = self._dynamic_qparams(x)
            scale, zero, block = qp.scale, qp.zero_point, qp.block_size
        elif self.is_frozen:
            scale, zero, block = fit_qparams(self.scale, self.zero_point, tuple(x.shape),
                                             tuple(int(b) for b in self.block_size.tolist()))
        elif self.spec.scheme is Scheme.FIXED_POINT:
            qp = _fixed_qparams(self.spec, x.device)
            scale, zero, block = fit_qparams(qp.scale, qp.zero_point, tuple(x.shape))
        else:
            raise StateError(self._uncalibrated_message("it was used before calibration"))
        learnable = self.spec.learnable and isinstance(self.scale, nn.Parameter)
        return self._fake_quantize(x, scale, zero, block, learnable).to(x.dtype)

    def _fake_quantize(self, x, scale, zero, block, learnable):
        qtype = self.spec.qtype
        xf = x.float()
        grad_scale = None
        if learnable:
            scale = scale.clamp(min=EPS)  # keep the learned step positive, as LSQ asks
            grad_scale = lsq_grad_scale(max(1, x.numel() // max(1, scale.numel())),
                                        max(1, qtype.qmax))
        if self.uses_fused:
            return self._fused(xf, scale, zero, grad_scale)
        if learnable:
            shape = tuple(x.shape)
            return lsq_fake_quantize(xf, expand_param(scale, shape, block),
                                     expand_param(zero, shape, block).float(),
                                     qtype.qmin, qtype.qmax, grad_scale)
        return fake_quantize(xf, QParams(scale, zero, qtype, block))

    def _fused(self, xf, scale, zero, grad_scale):
        """PyTorch's fused kernels; ``scale``/``zero`` have ``xf``'s rank (per tensor/channel)."""
        qmin, qmax = self.spec.qtype.qmin, self.spec.qtype.qmax
        if scale.numel() == 1:
            if grad_scale is not None:
                # PyTorch's per-tensor learnable backward reads the zero point as
                # int(z + 0.5), i.e. z + 1 for negative z.  Shifting the grid by -qmin
                # (codes [0, qmax-qmin], zero point z-qmin >= 0) is the same arithmetic
                # and keeps the zero point non-negative.
                shift = -qmin
                return torch._fake_quantize_learnable_per_tensor_affine(
                    xf, scale.reshape(1), zero.float().reshape(1) + shift, qmin + shift,
                    qmax + shift, grad_scale)
            return torch.fake_quantize_per_tensor_affine(
                xf, scale.detach().reshape(()), zero.reshape(()), qmin, qmax)
        axes = [d for d, n in enumerate(scale.shape) if n > 1]
        assert len(axes) == 1 and scale.shape[axes[0]] == xf.shape[axes[0]], \
            f"fused per-channel op got qparams {tuple(scale.shape)} for {tuple(xf.shape)}"
        axis, channels = axes[0], scale.shape[axes[0]]
        if grad_scale is not None:
            return torch._fake_quantize_learnable_per_channel_affine(
                xf, scale.reshape(channels), zero.float().reshape(channels), axis, qmin, qmax,
                grad_scale)
        return torch.fake_quantize_per_channel_affine(
            xf, scale.detach().reshape(channels), zero.reshape(channels), axis, qmin, qmax)

    # ------------------------------------------------------------------ reporting, loading

    def summary(self) -> dict:
        """Spec, fq_impl (and fallback reason), state, compact qparams and observer summary."""
        qp = None
        if self.is_frozen:
            scale = self.scale.detach()
            qp = {"qtype": self.spec.qtype.name, "block_size": self.block_size.tolist(),
                  "shape": list(scale.shape), "scale_min": float(scale.min()),
                  "scale_max": float(scale.max()),
                  "zero_point_min": int(self.zero_point.min()),
                  "zero_point_max": int(self.zero_point.max())}
        observed = self._has_data()
        return {"spec": self.spec.to_dict(), "fq_impl": self.fq_impl,
                "fused": self.uses_fused, "fallback_reason": self.fallback_reason,
                "state": self.state, "enabled": self.enabled, "learnable": self.spec.learnable,
                "qparams": qp, "n_observed": self._n_observed,
                "observer": self._observer.summary() if observed else None,
                "sat_ratio": float(self._observer.sat_ratio) if observed else None}

    def extra_repr(self) -> str:
        s = self.spec
        return (f"{s.qtype.name}, {s.scheme.value}, {s.granularity.kind}, "
                f"fq_impl={self.fq_impl}, state={self.state}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Adopt the saved qparams' shapes first, so a fresh quantizer loads a frozen one."""
        scale = state_dict.get(prefix + "scale")
        if isinstance(scale, torch.Tensor):
            self._set_scale(torch.empty(scale.shape, device=self.zero_point.device))
            for name, dtype in (("zero_point", torch.int32), ("block_size", torch.int64)):
                saved = state_dict.get(prefix + name)
                if isinstance(saved, torch.Tensor):
                    setattr(self, name, torch.empty(saved.shape, dtype=dtype,
                                                    device=self.zero_point.device))
            self.observing = False
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
