"""How one tensor (``QuantSpec``) and one layer (``LayerConfig``) are quantized.

Configs are frozen and validated on construction; every one round-trips
through ``to_dict``/``from_dict``, and the dicts carry a ``version`` field.
Calibration-method strings are parsed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .errors import ConfigError, check_int_range
from .types import Granularity, PerChannel, PerTensor, QType, Scheme, int8, qtype_from_name

CONFIG_VERSION = 1

# Canonical calibration method names, their aliases, and methods taking a parameter.
CALIB_METHODS = ("minmax", "moving_average", "percentile", "mse", "entropy", "auto")
_ALIASES = {"maxabs": "minmax", "max_abs": "minmax", "absmax": "minmax", "kl": "entropy",
            "moving_average_minmax": "moving_average", "ema": "moving_average",
            "p99": "percentile:99", "p999": "percentile:99.9", "p9999": "percentile:99.99"}
DEFAULT_PERCENTILE = 99.99


def parse_method(text: Any) -> tuple[str, dict]:
    """Parse a calibration method string into ``(name, params)``.

    Accepts the canonical names of :data:`CALIB_METHODS`, the aliases ``maxabs``,
    ``kl``, ``ema``, ``p99``/``p999``/``p9999`` and ``percentile:P`` with ``0 < P <= 100``.
    """
    if not isinstance(text, str):
        raise ConfigError("method", text, f"a string: one of {CALIB_METHODS} or 'percentile:P'",
                          fix="e.g. method='mse' or method='percentile:99.9'")
    raw = text.strip().lower()
    raw = _ALIASES.get(raw, raw)
    name, _, arg = raw.partition(":")
    name = _ALIASES.get(name, name)
    if name not in CALIB_METHODS:
        raise ConfigError("method", text, f"one of {CALIB_METHODS + tuple(_ALIASES)} "
                          "or 'percentile:P'", fix="e.g. 'minmax', 'p99', 'mse', 'kl' or 'auto'")
    if name == "percentile":
        try:
            p = float(arg) if arg else DEFAULT_PERCENTILE
        except ValueError:
            p = float("nan")
        if not 0.0 < p <= 100.0:
            raise ConfigError("method", text, "'percentile:P' with 0 < P <= 100",
                              fix="e.g. 'percentile:99.99' or the alias 'p99'")
        return name, {"p": p}
    if arg:
        raise ConfigError("method", text, f"'{name}' takes no ':' parameter",
                          fix=f"write just '{name}'")
    return name, {}


def normalize_method(text: Any) -> str:
    """Canonical spelling of a method string (``'p99'`` -> ``'percentile:99'``)."""
    name, params = parse_method(text)
    if name == "percentile":
        text = repr(float(params["p"]))
        return "percentile:" + (text[:-2] if text.endswith(".0") else text)
    return name


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    qtype: the integer grid. scheme: SYMMETRIC / AFFINE / FIXED_POINT.
    granularity: PerTensor(), PerChannel(axis), PerGroup(size, axis) or PerToken().
    method: calibration method (see :func:`parse_method`).
    dynamic: qparams computed from each input at run time instead of calibrated.
    learnable: LSQ step size trained during QAT.
    frac_bits: fractional bits of FIXED_POINT (Q8.8 -> 8); None otherwise.
    """

    qtype: QType = int8
    scheme: Scheme = Scheme.SYMMETRIC
    granularity: Granularity = field(default_factory=PerTensor)
    method: str = "minmax"
    dynamic: bool = False
    learnable: bool = False
    frac_bits: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "qtype", qtype_from_name(self.qtype))
        object.__setattr__(self, "scheme", Scheme.parse(self.scheme))
        object.__setattr__(self, "granularity", Granularity.from_dict(self.granularity))
        object.__setattr__(self, "method", normalize_method(self.method))
        for name in ("dynamic", "learnable"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"QuantSpec.{name}", getattr(self, name), "True or False")
        if self.scheme is Scheme.FIXED_POINT:
            check_int_range("QuantSpec.frac_bits", self.frac_bits, 0, 30,
                            fix="FIXED_POINT needs frac_bits, e.g. 8 for Q8.8 on int16")
            if self.dynamic or self.learnable:
                raise ConfigError("QuantSpec.scheme", self.scheme.value,
                                  "FIXED_POINT only with dynamic=False and learnable=False",
                                  fix="fixed point has a constant scale 2**-frac_bits; "
                                      "drop dynamic/learnable or use SYMMETRIC")
            if not isinstance(self.granularity, PerTensor):
                raise ConfigError("QuantSpec.granularity", self.granularity.to_dict(),
                                  "PerTensor() with FIXED_POINT", fix="use PerTensor()")
        elif self.frac_bits is not None:
            raise ConfigError("QuantSpec.frac_bits", self.frac_bits,
                              "None unless scheme is FIXED_POINT",
                              fix="remove frac_bits or set scheme=Scheme.FIXED_POINT")
        if self.dynamic and self.learnable:
            raise ConfigError("QuantSpec.learnable", True, "False when dynamic=True",
                              fix="dynamic qparams are recomputed per input and cannot be learned")

    @property
    def method_name(self) -> str:
        return parse_method(self.method)[0]

    @property
    def method_params(self) -> dict:
        return parse_method(self.method)[1]

    def replace(self, **changes) -> "QuantSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {"version": CONFIG_VERSION, "qtype": self.qtype.name, "scheme": self.scheme.value,
                "granularity": self.granularity.to_dict(), "method": self.method,
                "dynamic": self.dynamic, "learnable": self.learnable, "frac_bits": self.frac_bits}

    @classmethod
    def from_dict(cls, data: Mapping) -> "QuantSpec":
        fields = _check_dict("QuantSpec", data, {"qtype", "scheme", "granularity", "method",
                                                 "dynamic", "learnable", "frac_bits"})
        return cls(**fields)


@dataclass(frozen=True)
class LayerConfig:
    """How one module is quantized: its weight and its input activation (None = float)."""

    weight: QuantSpec | None = None
    act: QuantSpec | None = None

    def __post_init__(self):
        for name in ("weight", "act"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, QuantSpec.from_dict(value))
            elif value is not None and not isinstance(value, QuantSpec):
                raise ConfigError(f"LayerConfig.{name}", value, "a QuantSpec, a dict or None",
                                  fix=f"pass {name}=QuantSpec(...) or {name}=None to keep it float")

    def to_dict(self) -> dict:
        return {"version": CONFIG_VERSION,
                "weight": None if self.weight is None else self.weight.to_dict(),
                "act": None if self.act is None else self.act.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "LayerConfig":
        return cls(**_check_dict("LayerConfig", data, {"weight", "act"}))


def _check_dict(owner: str, data: Any, allowed: set[str]) -> dict:
    """Validate a serialized config dict: a mapping, known keys, a supported version."""
    if not isinstance(data, Mapping):
        raise ConfigError(owner, data, "a dict from to_dict()", fix=f"pass {owner}.to_dict() output")
    version = data.get("version", CONFIG_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) \
            or not 1 <= version <= CONFIG_VERSION:
        raise ConfigError(f"{owner}.version", version, f"an integer in [1, {CONFIG_VERSION}]",
                          fix="upgrade lowbit to read configs written by a newer version")
    unknown = set(data) - allowed - {"version"}
    if unknown:
        raise ConfigError(f"{owner} keys", sorted(unknown), f"only {sorted(allowed)}",
                          fix="remove the unknown keys (check their spelling)")
    return {k: v for k, v in data.items() if k != "version"}


def weight_spec(qtype: QType = int8, granularity: Granularity | None = None, **kw) -> QuantSpec:
    """Convenience: a weight spec, per-channel along axis 0 unless told otherwise."""
    return QuantSpec(qtype=qtype, granularity=granularity or PerChannel(0), **kw)


# ---------------------------------------------------------------------------- two choices of "how"
#
# A fake-quant module and a converted module each choose how they compute, and the two choices
# are different things with different names: ``fq_impl`` (fake quantization) and
# ``kernel_path`` (the converted module's kernel).  Both are validated here and nowhere else.

#: How a fake-quant module computes: lowbit's own autograd, or PyTorch's fused fake-quant ops
#: (falling back to the reference where they have no kernel, and recording why).
FQ_IMPLS = ("reference", "fused")

#: Which kernel a converted module runs: ``auto`` chooses per input size and records why; the
#: others force one path for every size: ``integer`` (PyTorch's integer kernels), ``dense``
#: (dequantize once, float GEMM) or ``reference`` (dequantize every call: bit-identical to
#: fake quantization).
KERNEL_PATHS = ("auto", "integer", "dense", "reference")

#: Older spellings, accepted only at the edges (the ``--quant_backend`` flag, the deprecated
#: ``backend=`` keyword, checkpoints and records written before the split).
LEGACY_FQ_IMPLS = {"python": "reference", "cpp": "fused", "native": "fused",
                   "reference": "reference"}
LEGACY_KERNEL_PATHS = {"native": "integer"}


def _check_named(field: str, value: Any, choices: tuple, legacy: dict, fix: str) -> str:
    if value not in choices:
        if isinstance(value, str) and value in legacy:
            fix += f"; {value!r} is the old name of {legacy[value]!r}"
        raise ConfigError(field, value, f"one of {choices}", fix=fix)
    return value


def check_fq_impl(value: Any) -> str:
    """``value`` if it is one of :data:`FQ_IMPLS`, else :class:`ConfigError`."""
    return _check_named("fq_impl", value, FQ_IMPLS, LEGACY_FQ_IMPLS,
                        "'reference' (lowbit's autograd) or 'fused' (PyTorch's fused "
                        "fake-quant ops)")


def check_kernel_path(value: Any) -> str:
    """``value`` if it is one of :data:`KERNEL_PATHS`, else :class:`ConfigError`."""
    return _check_named("kernel_path", value, KERNEL_PATHS, LEGACY_KERNEL_PATHS,
                        "'auto' measures per input size and records why; force 'integer' "
                        "(integer kernels), 'dense' (float GEMM) or 'reference' "
                        "(bit-identical to fake quantization)")


def fq_impl_from_legacy(value: Any, field: str = "backend") -> str:
    """The ``fq_impl`` an old spelling (``python``/``cpp``/``native``/``reference``) names."""
    if value in FQ_IMPLS:
        return value
    if value not in LEGACY_FQ_IMPLS:
        raise ConfigError(field, value, f"one of {tuple(LEGACY_FQ_IMPLS)} or {FQ_IMPLS}",
                          fix="use fq_impl='reference' or fq_impl='fused'")
    return LEGACY_FQ_IMPLS[value]


def resolve_fq_impl(fq_impl: Any, backend: Any = None) -> str:
    """The ``fq_impl`` a call asks for, honouring the deprecated ``backend=`` keyword."""
    if backend is None:
        return check_fq_impl(fq_impl)
    import warnings
    warnings.warn("the 'backend' keyword is deprecated: use fq_impl='reference' or "
                  "fq_impl='fused' (the old 'native')", DeprecationWarning, stacklevel=3)
    return fq_impl_from_legacy(backend)
