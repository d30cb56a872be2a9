"""Per-layer numbers of a calibrated fake-quant model, gathered in one streaming pass.

The model runs float (fake quantization off) over the batches; a forward hook on every
fake-quant layer sees the layer's float input ``x`` and output ``y`` and accumulates

* activation SQNR: ``x`` against ``act_quantizer(x)`` (signal and noise power summed);
* the observed range of ``x`` (exact min/max) and a bounded random sample of its values
  (at most ``sample_size`` per layer, for histograms and trying other clip methods);
* the layer's output error alone: ``y`` against the layer run with its own weight and input
  quantized on the same float ``x`` (so earlier layers' errors are not mixed in).

Weight SQNR is computed from the weight directly. Memory is the model plus one layer's
extra output at a time plus the samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..model.batches import call_batch
from ..model.prepare import quant_modules
from ..nn.qat import weight_matrix
from ..nn.quantizer import TensorQuantizer
from ..primitives.metrics import sqnr_db
from ..types import PerChannel, PerTensor


@dataclass
class _Acc:
    signal: float = 0.0
    noise: float = 0.0

    def add(self, ref: torch.Tensor, approx: torch.Tensor) -> None:
        ref, approx = ref.detach().double(), approx.detach().double()
        self.signal += float(ref.pow(2).sum())
        self.noise += float((approx - ref).pow(2).sum())

    @property
    def db(self) -> float | None:
        if self.signal == 0.0 and self.noise == 0.0:
            return None
        if self.noise == 0.0:
            return math.inf
        return 10.0 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf


@dataclass
class LayerStats:
    """Streaming statistics of one layer (see the module docstring)."""

    act: _Acc = field(default_factory=_Acc)
    out: _Acc = field(default_factory=_Acc)
    lo: float = math.inf
    hi: float = -math.inf
    samples: list = field(default_factory=list)
    n_sampled: int = 0


def _clip_range(q: TensorQuantizer | None) -> tuple[float, float] | None:
    """The per-tensor range a frozen static quantizer represents, ``[(qmin-z)s, (qmax-z)s]``."""
    if q is None or q.spec.dynamic or not q.ready:
        return None
    qp = q.qparams()
    if qp.scale.numel() != 1:
        return None
    s, z = float(qp.scale.reshape(())), float(qp.zero_point.reshape(()))
    return ((qp.qtype.qmin - z) * s, (qp.qtype.qmax - z) * s)


def weight_sqnr(module: nn.Module, spec=None) -> float:
    """SQNR (dB) of the layer's weight under its quantizer's spec (or ``spec``)."""
    w = weight_matrix(module.weight).detach()
    tq = TensorQuantizer(spec if spec is not None else module.weight_quantizer.spec)
    tq.freeze(w)
    return sqnr_db(w, tq(w))


def per_channel_twin(spec):
    """The same weight spec per output channel (None unless ``spec`` is per tensor)."""
    if spec is None or not isinstance(spec.granularity, PerTensor) or spec.frac_bits is not None:
        return None
    return spec.replace(granularity=PerChannel(0))


def collect(qmodel: nn.Module, batches: list, sample_size: int = 4096, seed: int = 0
            ) -> dict[str, dict]:
    """Run the batches and return per layer: act/output SQNR, observed range, clip range,
    and a value sample (a 1-D tensor). The model's fake quantization is on again after."""
    mods = dict(quant_modules(qmodel))
    stats = {n: LayerStats() for n in mods}
    per_batch = max(1, math.ceil(sample_size / max(1, len(batches))))
    gen = torch.Generator().manual_seed(seed)
    busy = [False]

    def hook_for(name: str, module: nn.Module):
        def hook(mod, inputs, output):
            if busy[0] or not inputs or not isinstance(inputs[0], torch.Tensor) \
                    or not inputs[0].is_floating_point():
                return
            x, st = inputs[0].detach(), stats[name]
            st.lo, st.hi = min(st.lo, float(x.min())), max(st.hi, float(x.max()))
            flat = x.reshape(-1)
            k = min(per_batch, flat.numel(), sample_size - st.n_sampled)
            if k > 0:
                idx = torch.randperm(flat.numel(), generator=gen)[:k]
                st.samples.append(flat[idx.to(flat.device)].float().cpu())
                st.n_sampled += k
            busy[0] = True
            try:
                if mod.act_quantizer is not None:
                    mod.act_quantizer.enabled = True
                    st.act.add(x, mod.act_quantizer(x))
                mod.set_fake_quant(True)
                st.out.add(output, mod(*inputs))
            finally:
                mod.set_fake_quant(False)
                busy[0] = False
        return hook

    handles = [m.register_forward_hook(hook_for(n, m)) for n, m in mods.items()]
    try:
        for m in mods.values():
            m.set_fake_quant(False)
        with torch.no_grad():
            for batch in batches:
                call_batch(qmodel, batch)
    finally:
        for h in handles:
            h.remove()
        for m in mods.values():
            m.set_fake_quant(True)
    out = {}
    for name, module in mods.items():
        st = stats[name]
        wq = module.weight_quantizer
        twin = per_channel_twin(wq.spec if wq is not None else None)
        out[name] = {
            "act_sqnr_db": st.act.db, "out_sqnr_db": st.out.db,
            "observed_range": None if st.n_sampled == 0 else [st.lo, st.hi],
            "clip_range": _clip_range(module.act_quantizer),
            "weight_sqnr_db": None if wq is None else weight_sqnr(module),
            "weight_sqnr_per_channel_db": None if twin is None else weight_sqnr(module, twin),
            "sample": torch.cat(st.samples) if st.samples else torch.zeros(0),
        }
    return out
