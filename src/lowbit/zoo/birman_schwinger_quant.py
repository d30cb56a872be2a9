"""The quantized Birman–Schwinger core: lowbit's prepare/calibrate/convert behind a small workflow.

:func:`birman_schwinger_recipe` turns a mode (``ptq_int8``, ``qat_int8``, ``ptq_int4``,
``qat_int4``) into an ordinary :class:`lowbit.Recipe`:

* every ``Linear`` as :class:`lowbit.QuantizationConfig` says — int8 per-channel weights, or int4
  weights in groups of ``group_size`` input features, and int8 per-tensor calibrated inputs.
  int8 weights are symmetric; int4 weights are affine by default (as lowbit's ``w4a16-g128``
  preset): with 16 levels, a zero point fits rows whose weights are not centred on zero;
* the core's output map (``*core.out``) quantizes its weight only: its input is the complex
  intermediate, already quantized at
* the :class:`~lowbit.nn.ComplexPoint` ``g_point``: int8, real and imaginary parts on separate
  grids. Rows are different potentials (batch items, heads of a language model) whose scales
  differ widely, so one calibrated range per tensor leaves small rows a few levels. A
  non-causal core therefore gets grids chosen per row at run time (dynamic per token); a causal
  one (``causal=True``) calibrated grids per position (per channel along the sequence), because
  a per-row range would let later positions change how earlier ones are rounded.

The recipe applies to any model holding cores under attributes named ``core`` (the language
model of :mod:`lowbit.zoo.birman_schwinger_lm` too).

:class:`QuantizedBirmanSchwingerCore` wraps one core with the workflow
``start_calibration()`` → forwards → ``end_calibration()`` → ``apply_ptq()`` (convert to integer
storage) or ``enable_qat()`` (train through the fake-quant grid), ``estimate_model_size()`` and
``forward(v, return_diagnostics=True)``. Misuse in the wrong order raises :class:`StateError`
(or :class:`ConfigError` for ``enable_qat()`` on a ``ptq_*`` mode); QAT in eval mode with
gradients on warns.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lowbit import (ByName, ByType, LayerConfig, QuantizationConfig, QuantSpec, Recipe, Rule,
                    StateError, convert, estimate_model_size, lowbit_state, prepare, to_float)
from lowbit.errors import ConfigError
from lowbit.model.prepare import quant_modules
from lowbit.primitives.affine import fake_quantize
from lowbit.primitives.metrics import sat_ratio, sqnr_db
from lowbit.types import PerChannel, PerToken, Scheme, int8

from .birman_schwinger import BirmanSchwingerCore

MODES = ("ptq_int8", "qat_int8", "ptq_int4", "qat_int4")


def birman_schwinger_recipe(mode: str = "ptq_int8", group_size: int = 128,
                            symmetric: bool | None = None, causal: bool = False) -> Recipe:
    """The Recipe of ``mode`` for models built from :class:`BirmanSchwingerCore` s (module doc).

    ``symmetric``: the weights' scheme; None picks symmetric for int8 and affine for int4.
    ``causal``: the cores are causal (language models): ``g`` gets per-position calibrated
    grids instead of per-row dynamic ones.
    """
    if not isinstance(causal, bool):
        raise ConfigError("causal", causal, "True or False",
                          fix="pass causal=True for models built from causal cores")
    if symmetric is None:
        symmetric = QuantizationConfig(mode=mode, group_size=group_size).bits == 8
    qc = QuantizationConfig(mode=mode, group_size=group_size, symmetric=symmetric)
    base = qc.to_recipe()
    linear = base.rules[0].config
    if causal:
        complex_act = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerChannel(1),
                                method="minmax")
    else:
        complex_act = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerToken(),
                                dynamic=True)
    rules = (Rule(ByType(("ComplexPoint",)), LayerConfig(weight=None, act=complex_act)),
             Rule(ByName("*core.out"), LayerConfig(weight=linear.weight, act=None))) + base.rules
    return Recipe(rules, f"birman-schwinger:{mode}:g{group_size}{':causal' if causal else ''}")


def relative_error(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """``‖approx − ref‖ / ‖ref‖`` (0 when both are zero)."""
    ref, approx = ref.detach().double(), approx.detach().double()
    norm = float(ref.norm())
    diff = float((approx - ref).norm())
    return diff / norm if norm else (0.0 if diff == 0 else float("inf"))


class _Holder(nn.Module):
    """Holds the core as ``core``, so that the recipe's ``*core.out`` rule finds it."""

    def __init__(self, core: BirmanSchwingerCore):
        super().__init__()
        self.core = core

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.core(v)


class QuantizedBirmanSchwingerCore(nn.Module):
    """One :class:`BirmanSchwingerCore` quantized by ``mode`` (see the module doc).

    ``core``: a trained float core to quantize (deep-copied); without it one is built from
    ``n_seq``, ``epsilon``, ``seed`` and ``causal``. The recipe is
    ``birman_schwinger_recipe(mode, group_size, causal=core.causal)``. Weights are frozen (``requires_grad=False``) until
    :meth:`enable_qat`. The prepared lowbit model is :attr:`net` (records in
    ``lowbit.lowbit_state(q.net).records``).
    """

    def __init__(self, n_seq: int = 128, mode: str = "ptq_int8", epsilon: float = 1.0,
                 group_size: int = 128, *, seed: int = 0, causal: bool = False,
                 core: BirmanSchwingerCore | None = None):
        super().__init__()
        self.config = QuantizationConfig(mode=mode, group_size=group_size)
        if core is None:
            core = BirmanSchwingerCore(n_seq, epsilon, seed=seed, causal=causal)
        elif not isinstance(core, BirmanSchwingerCore):
            raise ConfigError("core", type(core).__name__, "a BirmanSchwingerCore or None",
                              fix="pass the float core to quantize, or leave core=None")
        if self.config.bits == 4 and core.n_seq % group_size:
            raise ConfigError("group_size", group_size, f"a divisor of n_seq={core.n_seq}",
                              fix=f"int4 groups run along the n_seq inputs; use n_seq a "
                                  f"multiple of {group_size} or a smaller group_size")
        self.n_seq, self.epsilon = core.n_seq, core.epsilon
        self.recipe = birman_schwinger_recipe(mode, group_size, causal=core.causal)
        self.net = prepare(_Holder(core), self.recipe)
        self.net.requires_grad_(False)
        self.calibrating = False
        self.calibrated = False
        self.qat_enabled = False
        self.ptq_applied = False
        self._n_calibration_batches = 0
        self._v_qparams = None
        self.__dict__["_reference"] = None  # float snapshot taken by apply_ptq (not a submodule)

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def bits(self) -> int:
        return self.config.bits

    # ------------------------------------------------------------------ workflow

    def start_calibration(self) -> None:
        """Observers on: the following forwards record ranges and return float outputs."""
        if self.ptq_applied:
            raise StateError("apply_ptq() already converted this core to integer storage; "
                             "calibrate before apply_ptq (create a new core to re-calibrate)")
        self.net.start_calibration()
        self.calibrating = True
        self._n_calibration_batches = 0

    def end_calibration(self) -> None:
        """Freeze the observed ranges into qparams; the core is then ``calibrated``."""
        if not self.calibrating:
            raise StateError("end_calibration() without start_calibration(); call "
                             "start_calibration(), run potentials through the core, then "
                             "end_calibration()")
        if self._n_calibration_batches == 0:
            raise StateError("no potentials were run between start_calibration() and "
                             "end_calibration(); run a few calibration batches model(v) first")
        self.net.end_calibration()
        self.calibrating = False
        self.calibrated = True
        self._v_qparams = self.net.core.proj.act_quantizer.qparams()

    def apply_ptq(self) -> None:
        """Convert the calibrated (or QAT-trained) core to integer storage, once."""
        if self.ptq_applied:
            raise StateError("apply_ptq() was already called: the core holds integer weights "
                             "now; create a new core to quantize again")
        if not self.calibrated or self.calibrating:
            raise StateError("apply_ptq() needs calibration first: call start_calibration(), "
                             "run potentials through the core, then end_calibration()")
        reference = to_float(copy.deepcopy(self.net))
        self.__dict__["_reference"] = reference.eval().requires_grad_(False)
        self.net = convert(self.net, inplace=True)
        self.ptq_applied = True
        self.qat_enabled = False

    def enable_qat(self) -> None:
        """Train through the fake-quant grid: weights get gradients, the core goes to train mode."""
        if not self.config.qat:
            raise ConfigError("mode", self.mode, "a qat_* mode for enable_qat()",
                              fix=f"create the core with mode='qat_int{self.bits}' to train "
                                  "through quantization, or use apply_ptq() for PTQ")
        if self.ptq_applied:
            raise StateError("apply_ptq() converted the core to integer storage, which cannot "
                             "be trained; enable_qat() before apply_ptq()")
        if not self.calibrated:
            raise StateError("enable_qat() needs calibrated ranges first: call "
                             "start_calibration(), run potentials, then end_calibration()")
        for name, param in self.net.named_parameters():
            param.requires_grad_(True)
        self.qat_enabled = True
        self.train()

    def estimate_model_size(self) -> dict:
        """``fp32_bytes``, ``quantized_bytes`` and ``compression_ratio`` of the core as held now
        (lowbit's :func:`~lowbit.estimate_model_size`: the ratio exceeds 1 after apply_ptq)."""
        size = estimate_model_size(self.net)
        return {"fp32_bytes": size["float_bytes"], "quantized_bytes": size["quantized_bytes"],
                "compression_ratio": size["compression_ratio"], "ptq_applied": self.ptq_applied}

    # ------------------------------------------------------------------ forward

    def forward(self, v: torch.Tensor, return_diagnostics: bool = False):
        """(B, n_seq) potential -> complex features, and the diagnostics dict when asked."""
        if self.calibrating:
            with torch.no_grad():
                out = self.net(v)
            self._n_calibration_batches += 1
        elif not self.calibrated:
            raise StateError("the core is not calibrated: call start_calibration(), run "
                             "potentials through it, then end_calibration() before inference")
        else:
            if self.qat_enabled and not self.training and torch.is_grad_enabled():
                warnings.warn("QAT is enabled but the core is in eval mode; call model.train() "
                              "before training through quantization", UserWarning, stacklevel=2)
            if not return_diagnostics:
                return self.net(v)
            seen = []
            hook = self.net.core.g_point.register_forward_hook(
                lambda module, args, output: seen.append((args[0].detach(), output.detach())))
            try:
                out = self.net(v)
            finally:
                hook.remove()
            return out, self.diagnostics(v, out, seen[0] if seen else None)
        if not return_diagnostics:
            return out
        return out, self.diagnostics(v, out)

    def _float_output(self, v: torch.Tensor) -> torch.Tensor:
        """The same core without quantization (weights as they are, or as converted from)."""
        with torch.no_grad():
            if self._reference is not None:
                return self._reference(v)
            modules = [m for _, m in quant_modules(self.net)]
            for m in modules:
                m.set_fake_quant(False)
            try:
                return self.net(v)
            finally:
                for m in modules:
                    m.set_fake_quant(True)

    def diagnostics(self, v: torch.Tensor, out: torch.Tensor,
                    g_pair: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Mode, state, relative errors of ``v``, of the intermediate ``g`` (``g_pair``: its
        float and quantized values) and of the output ``G``'s parts, SQNR, layer records."""
        diag = {"quantization_mode": self.mode, "bits": self.bits,
                "group_size": self.config.group_size, "calibrated": self.calibrated,
                "calibrating": self.calibrating, "qat_enabled": self.qat_enabled,
                "ptq_applied": self.ptq_applied, "v_quantization_error": None,
                "v_sat_ratio": None, "G_real_quantization_error": None,
                "G_imag_quantization_error": None, "G_sqnr_db": None,
                "g_real_quantization_error": None, "g_imag_quantization_error": None}
        if g_pair is not None:
            g, gq = g_pair
            diag["g_real_quantization_error"] = relative_error(g.real, gq.real)
            diag["g_imag_quantization_error"] = relative_error(g.imag, gq.imag)
        if self.calibrated and not self.calibrating:
            with torch.no_grad():
                vq = fake_quantize(v.detach().float(), self._v_qparams)
                diag["v_quantization_error"] = relative_error(v, vq)
                diag["v_sat_ratio"] = sat_ratio(v.detach().float(), self._v_qparams)
                ref = self._float_output(v)
                diag["G_real_quantization_error"] = relative_error(ref.real, out.real)
                diag["G_imag_quantization_error"] = relative_error(ref.imag, out.imag)
                diag["G_sqnr_db"] = sqnr_db(ref, out.detach())
        diag["layers"] = {r.name: {"action": r.action, "kernel": r.kernel, **r.metrics}
                          for r in lowbit_state(self.net).records}
        return diag


def create_quantized_birman_schwinger(n_seq: int = 128, mode: str = "ptq_int8",
                                      epsilon: float = 1.0, group_size: int = 128,
                                      **kwargs) -> QuantizedBirmanSchwingerCore:
    """A :class:`QuantizedBirmanSchwingerCore` (keyword arguments ``seed``, ``causal``,
    ``core`` pass through)."""
    return QuantizedBirmanSchwingerCore(n_seq, mode, epsilon, group_size, **kwargs)
