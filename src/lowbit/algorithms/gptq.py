"""GPTQ: round weights one input column at a time and let the later columns absorb the error.

Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (ICLR 2023), Algorithm 1.  For a layer ``y = W x`` with
calibration inputs ``X`` the layer-wise objective ``‖W X − Ŵ X‖²`` has Hessian
``H = 2·XᵀX/n`` (:class:`HessianAccumulator`, streamed batch by batch).  With
``U = chol(H⁻¹)ᵀ`` (upper) the columns ``j`` are quantized in order and the error
``e = (w_j − q_j) / U_jj`` is spread over the remaining columns: ``W[:, j:] −= e·U[j, j:]``
(eq. 3-4).  Updates are applied lazily per block of ``block_size`` columns (§ "Lazy batch
updates"); the damping ``λ = damp·mean(diag H)`` is added to the diagonal, and raised
when a Cholesky factorization fails (the retries are returned and recorded).

Symbols → variables: ``W`` weight ``[O, K]``, ``H`` hessian ``[K, K]``, ``U`` hinv,
``e`` err, block columns ``[i1, i2)``.  ``act_order`` visits columns by decreasing
``diag H``; it uses *static* group qparams (computed from the original weight before any
update), so the stored layout keeps groups of consecutive original columns and needs no
index.  Without ``act_order`` a group's qparams are chosen when its first column is reached,
from the weights updated so far (``static_groups=True`` computes them up front instead).

The result is what lowbit's convert stores: the weight becomes exactly the dequantized codes
``(q − z)·s`` and the layer's weight quantizer holds ``(s, z)``, so convert, checkpoints and
kernels treat a GPTQ layer like any other (exactly for float32 weights; a bfloat16 weight
cannot hold every ``(q − z)·s``, so convert may re-round a few codes).  Within one block the
Hessians of all layers come from one pass over the block with float weights; the block's
quantized outputs then feed the next block.  Under ``torch.distributed`` each layer's
Hessian is summed over the ranks, one rank quantizes the layer and shares the result
(:mod:`lowbit.distributed.layers`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..config import QuantSpec
from ..distributed import all_reduce_, all_reduce_count, run_owned
from ..errors import ConfigError, InputError, check_int_range
from ..nn.qat import QuantLinear
from ..nn.quantizer import TensorQuantizer
from ..primitives.affine import expand_param, fake_quantize
from ..runtime import one_thread
from ..types import PerChannel, PerGroup, QParams
from .base import Algorithm, register_algorithm

logger = logging.getLogger(__name__)

HESSIAN_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class HessianAccumulator:
    """Streams ``H = 2·XᵀX / n`` over the rows of inputs ``[..., K]``."""

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32, device=None):
        self.sum = torch.zeros(in_features, in_features, dtype=dtype, device=device)  # [K, K]
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.sum.shape[0]).to(self.sum.dtype)  # [rows, K]
        self.sum.addmm_(x.t(), x)
        self.n += x.shape[0]

    def all_reduce(self) -> None:
        """Sum ``XᵀX`` and the row count over the ``torch.distributed`` ranks (each rank
        saw its own calibration rows); a no-op in one process."""
        all_reduce_(self.sum, "sum")
        self.n = all_reduce_count(self.n)

    def hessian(self) -> torch.Tensor:
        if self.n == 0:
            raise InputError("GPTQ: a layer saw no calibration rows; pass calibration data "
                             "that reaches every quantized layer")
        return self.sum * (2.0 / self.n)


@dataclass
class GPTQResult:
    """What :func:`gptq_quantize` returns: the dequantized weight, its qparams, the damping
    fraction used and how many times it was raised."""

    weight: torch.Tensor  # [O, K] float32, exactly (q - z) * s
    qparams: QParams
    damp: float
    retries: int


def _slice_qparams(spec: QuantSpec, w: torch.Tensor, granularity) -> QParams:
    """qparams of ``w`` under ``spec``'s grid and calibration method at ``granularity``."""
    q = TensorQuantizer(spec.replace(granularity=granularity, learnable=False))
    return q.freeze(w).qparams()


def inverse_cholesky(hessian: torch.Tensor, damp: float, max_retries: int
                     ) -> tuple[torch.Tensor, float, int]:
    """``(U, damp used, retries)`` with ``U`` the upper Cholesky factor of
    ``(H + damp·mean(diag H)·I)⁻¹``; ``damp`` is raised tenfold (to at least 1e-3) after
    every failed factorization.  Raises :class:`InputError` when all attempts fail.

    One factorization and one triangular inverse: with ``J`` the reversal permutation and
    ``J H J = L Lᵀ`` (lower ``L``), ``H⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J)`` and ``J L⁻¹ J`` is upper
    with a positive diagonal, so it is ``U`` (no explicit inverse of ``H``)."""
    k = hessian.shape[0]
    mean_diag = float(torch.diagonal(hessian).mean())
    eye = torch.eye(k, dtype=hessian.dtype, device=hessian.device)
    flipped = hessian.flip((0, 1))  # J H J
    frac = tried = damp
    for attempt in range(max_retries + 1):
        tried = frac
        chol, info = torch.linalg.cholesky_ex(flipped + (frac * mean_diag) * eye)
        if int(info) == 0:
            upper = torch.linalg.solve_triangular(chol, eye, upper=False).flip((0, 1))
            if bool(torch.isfinite(upper).all()):
                return upper, frac, attempt
        logger.warning("GPTQ: Cholesky failed with damp=%g; retrying with more damping", frac)
        frac = max(frac * 10.0, 1e-3)
    raise InputError(f"GPTQ: the Hessian is not positive definite even with damp={tried:g} "
                     f"after {max_retries} retries; check the calibration inputs for NaN/Inf "
                     "or raise damp")


def _group_size(spec: QuantSpec, in_features: int) -> int | None:
    """The size of the column groups whose qparams GPTQ may choose lazily, or None."""
    g = spec.granularity
    if isinstance(g, PerGroup) and g.axis in (1, -1) and g.size < in_features:
        return g.size
    return None


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec, *,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                  static_groups: bool = False, max_retries: int = 6) -> GPTQResult:
    """GPTQ on one weight matrix ``[O, K]`` with Hessian ``[K, K]`` (see the module doc).

    ``spec`` gives the grid, scheme, granularity and the method that picks each group's
    range.  The arithmetic runs in the Hessian's dtype; rounding is lowbit's own
    (``clamp(round(w·(1/s)) + z)``, half to even, in float32).
    """
    O, K = weight.shape
    dtype = hessian.dtype
    W = weight.detach().to(dtype).clone()  # [O, K]
    H = hessian.detach().clone()  # [K, K]
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0  # inputs never seen: their error is not spread
    group = _group_size(spec, K)
    lazy = group is not None and not (act_order or static_groups)
    qtype = spec.qtype
    scale = torch.empty(O, K, dtype=torch.float32, device=W.device)  # per element, [O, K]
    zero = torch.empty(O, K, dtype=torch.float32, device=W.device)
    qp = None
    if not lazy:
        qp = _slice_qparams(spec, weight.detach().float(), spec.granularity)
        shape = (O, K)
        scale.copy_(expand_param(qp.scale.float(), shape, qp.block_size).expand(shape))
        zero.copy_(expand_param(qp.zero_point, shape, qp.block_size).float().expand(shape))
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
        scale, zero = scale[:, perm], zero[:, perm]
    U, used, retries = inverse_cholesky(H, damp, max_retries)  # [K, K] upper
    Q = torch.zeros_like(W)
    bounds = set(range(0, K, block_size)) | (set(range(0, K, group)) if lazy else set())
    edges = sorted(bounds) + [K]
    group_scales, group_zeros = [], []
    for i1, i2 in zip(edges[:-1], edges[1:]):
        if lazy and i1 % group == 0:  # a group starts: its columns are fully updated here
            gq = _slice_qparams(spec, W[:, i1:i1 + group].float(), PerChannel(0))
            group_scales.append(gq.scale.reshape(O))
            group_zeros.append(gq.zero_point.reshape(O))
            scale[:, i1:i1 + group] = gq.scale.float().reshape(O, 1)
            zero[:, i1:i1 + group] = gq.zero_point.float().reshape(O, 1)
        W1 = W[:, i1:i2].clone()  # [O, B]
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]  # [B, B]
        with one_thread():  # vector ops of O elements: threads cost more than they give
            _quantize_columns(W1, E1, U1, Q[:, i1:i2], scale[:, i1:i2], zero[:, i1:i2], qtype,
                              1.0 / scale[:, i1:i2])
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if lazy:
        qp = QParams(torch.stack(group_scales, 1), torch.stack(group_zeros, 1).to(torch.int32),
                     qtype, (1, group))
    return GPTQResult(Q.float(), qp, used, retries)


def _quantize_columns(W1, E1, U1, Q1, scale, zero, qtype, inv_scale) -> None:
    """Quantize the columns of one lazy block in order (eq. 3-4), in place: ``W1 [O, B]``
    updated weights, ``E1`` the scaled errors, ``Q1`` the dequantized result;
    ``inv_scale = 1 / scale``, computed once per block."""
    for i in range(W1.shape[1]):
        w = W1[:, i]  # [O]
        s, z = scale[:, i], zero[:, i]
        q = torch.clamp(torch.round(w.float() * inv_scale[:, i]) + z, qtype.qmin, qtype.qmax)
        dq = ((q - z) * s).to(W1.dtype)  # [O]
        Q1[:, i] = dq
        err = (w - dq) / U1[i, i]
        W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
        E1[:, i] = err


def output_mse(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """Mean squared output error ``‖ΔW X‖² / (n·O)`` of a weight change ``ΔW [O, K]``,
    from ``H = 2·XᵀX/n``."""
    d = delta.to(hessian.dtype)
    return float((d @ hessian * d).sum()) / (2.0 * delta.shape[0])


@register_algorithm
@dataclass(frozen=True)
class GPTQ(Algorithm):
    """GPTQ for every lowbit ``QuantLinear`` of a block (weights only; see the module doc).

    damp: fraction of the mean Hessian diagonal added to it. block_size: columns per lazy
    update. act_order (on by default): visit columns by decreasing Hessian diagonal (static
    group qparams). static_groups: choose group qparams from the original weight. hessian_dtype: "float32"
    or "float64". max_retries: how often a failed Cholesky raises the damping.
    Each layer's record gets ``gptq_output_mse`` next to ``rtn_output_mse`` (plain rounding
    with the calibrated qparams, same inputs), the damping used and the retries.
    """

    name = "gptq"
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = True
    static_groups: bool = False
    hessian_dtype: str = "float32"
    max_retries: int = 6

    def __post_init__(self):
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) \
                or not 0.0 <= self.damp < 1e6:
            raise ConfigError("GPTQ.damp", self.damp, "a number >= 0 (fraction of the mean "
                              "Hessian diagonal)", fix="e.g. GPTQ(damp=0.01)")
        check_int_range("GPTQ.block_size", self.block_size, 1, 1 << 20, fix="e.g. 128")
        check_int_range("GPTQ.max_retries", self.max_retries, 0, 100, fix="e.g. 6")
        for name in ("act_order", "static_groups"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"GPTQ.{name}", getattr(self, name), "True or False")
        if self.hessian_dtype not in HESSIAN_DTYPES:
            raise ConfigError("GPTQ.hessian_dtype", self.hessian_dtype,
                              f"one of {sorted(HESSIAN_DTYPES)}", fix="e.g. 'float32'")

    def apply_block(self, ctx) -> None:
        layers = [(n, m) for n, m in ctx.layers(QuantLinear) if m.weight_quantizer is not None]
        if not layers:
            return
        shared = SharedHessians(HESSIAN_DTYPES[self.hessian_dtype])
        hooks = []
        for n, m in layers:
            hooks.append(m.register_forward_pre_hook(
                lambda module, args, _n=n: shared.add(_n, module, args[0])))
            m.weight_quantizer.enabled = False  # the Hessians see the block's float weights
        try:
            ctx.run()
        finally:
            for h in hooks:
                h.remove()
            for _, m in layers:
                m.weight_quantizer.enabled = True
        names = [n for n, _ in layers]
        groups = shared.hessians()  # summed over the ranks: every rank's rows
        covered = {n for group, _ in groups for n in group}
        for n, m in layers:  # never taken: HessianAccumulator raises the usual error
            if n not in covered:
                HessianAccumulator(m.in_features).hessian()

        def quantize(u: int) -> None:  # on the rank that owns the unit (layers of one H)
            group, hessian = groups[u]
            self.quantize_layers([dict(layers)[n] for n in group], hessian,
                                 [ctx.record(n) for n in group])

        run_owned([m for _, m in layers], quantize, [ctx.record(n) for n in names],
                  units=[[names.index(n) for n in group] for group, _ in groups])

    def quantize_layers(self, modules: list[nn.Module], hessian: torch.Tensor,
                        records: list | None = None) -> None:
        """GPTQ on layers that read the same inputs (one ``hessian``): one run over their
        stacked rows when their specs are equal and row-wise (per output channel or per group
        along the input), which is exactly GPTQ on each (rows are independent given ``H``)
        with one factorization; else one run per layer."""
        records = records or [None] * len(modules)
        spec = modules[0].weight_quantizer.spec
        if len(modules) == 1 or not _row_wise(spec) or any(
                m.weight_quantizer.spec != spec for m in modules):
            for m, r in zip(modules, records):
                self.quantize_layer(m, hessian, r)
            return
        t0 = time.perf_counter()
        ws = [m.weight.detach().float() for m in modules]
        res = self._run(torch.cat(ws), hessian, spec)
        rows = 0
        for m, w, r in zip(modules, ws, records):
            part = slice(rows, rows + w.shape[0])
            rows += w.shape[0]
            qp = QParams(res.qparams.scale[part], res.qparams.zero_point[part],
                         res.qparams.qtype, res.qparams.block_size)
            self._install(m, w, GPTQResult(res.weight[part], qp, res.damp, res.retries),
                          hessian, r, (time.perf_counter() - t0) / len(modules))

    def _run(self, w: torch.Tensor, hessian: torch.Tensor, spec: QuantSpec) -> GPTQResult:
        return gptq_quantize(w, hessian, spec, damp=float(self.damp),
                             block_size=self.block_size, act_order=self.act_order,
                             static_groups=self.static_groups, max_retries=self.max_retries)

    def quantize_layer(self, module: nn.Module, hessian: torch.Tensor, record=None) -> GPTQResult:
        """Run GPTQ on ``module`` (a calibrated QuantLinear) with ``hessian``; its weight
        becomes the dequantized codes and its weight quantizer holds their qparams."""
        t0 = time.perf_counter()
        w = module.weight.detach().float()  # [O, K]
        res = self._run(w, hessian, module.weight_quantizer.spec)
        self._install(module, w, res, hessian, record, time.perf_counter() - t0)
        return res

    @staticmethod
    def _install(module, w, res: GPTQResult, hessian, record, seconds: float) -> None:
        """Write ``res`` into ``module`` and its record (errors next to plain rounding's)."""
        wq = module.weight_quantizer
        rtn_qp = wq.qparams() if wq.is_frozen else _slice_qparams(wq.spec, w, wq.spec.granularity)
        rtn_mse = output_mse(w - fake_quantize(w, rtn_qp), hessian)
        gptq_mse = output_mse(w - res.weight, hessian)
        with torch.no_grad():
            module.weight.copy_(res.weight.reshape(module.weight.shape).to(module.weight.dtype))
        wq.set_qparams(res.qparams)
        if record is not None:
            record.metrics.update(gptq_output_mse=gptq_mse, rtn_output_mse=rtn_mse,
                                  gptq_damp=res.damp, gptq_damp_retries=res.retries,
                                  gptq_seconds=seconds)
            if res.retries:
                record.reason += (f"; GPTQ: Cholesky failed, damping raised to {res.damp:g} "
                                  f"after {res.retries} retr{'y' if res.retries == 1 else 'ies'}")


def _row_wise(spec: QuantSpec) -> bool:
    """Whether ``spec``'s qparams are chosen per output row (so stacked rows keep theirs)."""
    g = spec.granularity
    return (isinstance(g, PerChannel) and g.axis == 0) or \
        (isinstance(g, PerGroup) and g.axis in (1, -1))


class SharedHessians:
    """One :class:`HessianAccumulator` per set of layers that read the *same* input tensor
    (e.g. a decoder's q/k/v projections, its gate/up projections), found at run time: a
    layer called with the very tensor the previous layer got, and the same input
    quantization (none, or an equal dynamic spec), joins that layer's set, so ``XᵀX`` is
    accumulated once for the set.  ``add`` is the layers' forward pre-hook body."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.acc: dict[tuple[str, ...], HessianAccumulator] = {}
        self._pending: tuple[list[str], torch.Tensor, torch.Tensor, nn.Module] | None = None

    def add(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        p = self._pending
        if p is not None and x is p[1] and _same_input_quant(module, p[3]):
            p[0].append(name)
            return
        self.flush()
        self._pending = ([name], x, module.quantized_input(x), module)

    def flush(self) -> None:
        """Add the pending input to its set's accumulator."""
        if self._pending is not None:
            names, _, q, _ = self._pending
            key = tuple(names)
            if key not in self.acc:
                self.acc[key] = HessianAccumulator(q.shape[-1], self.dtype, q.device)
            self.acc[key].add(q)
            self._pending = None

    def hessians(self) -> list[tuple[list[str], torch.Tensor]]:
        """``(layer names, H)``: layers grouped when they shared their input on every call
        (a layer whose sets differed between calls gets the sum over its sets).  Under
        ``torch.distributed`` each set's ``XᵀX`` and row count are summed over the ranks first
        (the sets come from the model's call order, the same on every rank)."""
        self.flush()
        for acc in self.acc.values():
            acc.all_reduce()
        keys_of: dict[str, list[tuple[str, ...]]] = {}
        for key in self.acc:
            for name in key:
                keys_of.setdefault(name, []).append(key)
        groups: dict[tuple, list[str]] = {}
        for name, keys in keys_of.items():
            groups.setdefault(tuple(keys), []).append(name)
        out = []
        for keys, names in groups.items():
            if len(keys) == 1:
                out.append((names, self.acc[keys[0]].hessian()))
            else:
                total = HessianAccumulator(self.acc[keys[0]].sum.shape[0], self.dtype)
                for k in keys:
                    total.sum += self.acc[k].sum
                    total.n += self.acc[k].n
                out.append((names, total.hessian()))
        return out


def _same_input_quant(a: nn.Module, b: nn.Module) -> bool:
    qa, qb = a.act_quantizer, b.act_quantizer
    if qa is None or qb is None:
        return qa is None and qb is None
    return qa.spec.dynamic and qa.spec == qb.spec and qa.enabled == qb.enabled
