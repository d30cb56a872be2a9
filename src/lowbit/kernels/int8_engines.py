"""W8A8 on PyTorch's x86 quantized engines: fbgemm and oneDNN's quantized linear.

Both engines multiply *unsigned* 8-bit activations by signed 8-bit weights with one
activation zero point for the whole input and return float32.  lowbit's activations are
int8 AFFINE codes with one ``(sx, zx)`` per row (:mod:`.act`); they reach the engines
exactly, in one of two feeds:

``zp128`` (one pass)  ``u = q + 128`` (uint8), engine zero point 128: the engine computes
                      ``Σ_k (u_k − 128)·w_k = Σ_k q_k·w_k`` in int32.
``split7`` (two row blocks in one call)  ``u = 128·b + a`` with ``a = u mod 128`` in [0, 127]
                      and ``b`` in {0, 1}; the rows ``[a; b]`` go through the engine with
                      zero point 0 and ``Σ u·w = Σ a·w + 128·Σ b·w``.

Why two feeds: without VNNI the engines multiply with ``vpmaddubsw``, which adds *pairs* of
u8×s8 products into int16 and saturates (``255·127 + 255·127 > 32767``): wrong sums,
silently.  ``a <= 127`` keeps every pair within int16 (``2·127·128 = 32512``) on every
x86 CPU, so ``split7`` is exact everywhere, at twice the multiply work (nearly free at few
rows, where reading the weight is the cost).  ``zp128`` is available only where a check on
saturating inputs (:func:`engine_exactness`, once per process and engine) finds the engine's
sums exact — on VNNI/AMX CPUs (both engines pass it on an AVX512-VNNI EPYC and fail it
with ``ONEDNN_MAX_CPU_ISA=AVX2`` / ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2``; oneDNN's ``_int_mm``
fails lowbit's probe there for the same reason).

The weight's int8 codes are packed once (shifted as in :mod:`.int8`, the engine's weight zero
points 0) with the per-channel scales ``sw`` for ``zp128``, so the engine returns
``E = sw ⊗ acc`` (``acc`` the exact integer sum), and with unit scales for ``split7``, whose
two blocks add up as exact integers first.  The epilogue, in place (two passes over
``[M, N]``, one more with weight zero points), is for ``zp128`` ::

    y = sx ⊗ (E − zx' ⊗ (sw·colsum) − rowsum' ⊗ (sw·zw)) + 1 ⊗ bias

and for ``split7`` the same with ``sw`` moved outside: ``sx ⊗ sw · (acc − zx' ⊗ colsum −
rowsum' ⊗ zw) + bias``; ``colsum = Σ_k w − K·zw`` and, for ``zp128``, ``zx' = zx``,
``rowsum' = Σ_k q``; for ``split7`` ``zx' = zx + 128``, ``rowsum' = Σ_k u``.  That equals
``sx ⊗ sw · Σ_k (q − zx)(w − zw) + bias``: lowbit's W8A8 numerics, exact integer sums and a
float32 epilogue (rounding relative ~1e-7; ``tests/kernels/test_int8_engines.py`` holds it to
1e-6 against an int64 reference).

Packing needs the quantized engine set to fbgemm (torch reads the global
``torch.backends.quantized.engine``): it is switched for the packing call only, under a lock,
and restored (importing this module changes nothing).  Running reads the packed object, not
the global.  oneDNN's ``qlinear_prepack``/``qlinear_pointwise`` (``torch.ops.onednn``, the
ops ``torch.compile`` lowers quantized linears to) take plain uint8/int8 tensors and need no
engine switch; oneDNN runs a reference kernel (hundreds of times slower) for *signed*
activations, which is why both feeds are unsigned.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .formats import act_kernel_reason
from .int8 import MAX_K_W8A8, int8_codes
from .registry import KernelImpl, register
from .weights import QuantWeight

#: The feeds (see the module docstring).
FEEDS = ("zp128", "split7")

_engine_lock = threading.Lock()
_exactness: dict[str, str | None] = {}


@contextlib.contextmanager
def quantized_engine(name: str):
    """Set ``torch.backends.quantized.engine`` to ``name`` inside the block only."""
    with _engine_lock:
        old = torch.backends.quantized.engine
        torch.backends.quantized.engine = name
        try:
            yield
        finally:
            torch.backends.quantized.engine = old


# --------------------------------------------------------------------------- the engines


def _fbgemm_missing() -> str | None:
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return f"this torch {torch.__version__} build has no fbgemm quantized engine"
    if not hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32"):
        return (f"torch {torch.__version__} has no quantized::"
                "linear_with_input_q_dq_qweight_dq_output_fp32")
    return None


def _fbgemm_pack(codes: torch.Tensor, sw: torch.Tensor):
    """int8 codes ``[N, K]`` and scales ``[N]`` -> fbgemm's packed weight (zero points 0)."""
    zero = torch.zeros(codes.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated, still the only way in
        warnings.simplefilter("ignore", UserWarning)
        qw = torch._make_per_channel_quantized_tensor(codes.cpu(), sw.double().cpu(), zero, 0)
        with quantized_engine("fbgemm"):
            return torch.ops.quantized.linear_prepack(qw, None)


def _fbgemm_matmul(packed, sw, u8: torch.Tensor) -> torch.Tensor:
    """``sw ⊗ Σ_k u8·w`` float32 ``[M, N]`` (the op takes float input and quantizes it with
    scale 1 and zero point 0: integer values pass unchanged)."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        u8.float(), 1.0, 0, packed)


def _fbgemm_matmul_signed(packed, sw, q: torch.Tensor) -> torch.Tensor:
    """``sw ⊗ Σ_k q·w`` of int8 rows ``q``: the op adds zero point 128, the engine reads
    ``q + 128`` as uint8 and subtracts 128 again."""
    return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        q.float(), 1.0, 128, packed)


def _onednn_missing() -> str | None:
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return f"torch {torch.__version__} has no onednn::qlinear_pointwise"
    return None


@dataclass
class _OnednnWeight:
    packed: torch.Tensor
    zero: torch.Tensor  # int32 [N] zeros: the engine's weight zero points


def _onednn_pack(codes: torch.Tensor, sw: torch.Tensor) -> _OnednnWeight:
    return _OnednnWeight(torch.ops.onednn.qlinear_prepack(codes, None),
                         torch.zeros(codes.shape[0], dtype=torch.int32))


def _onednn_call(packed: _OnednnWeight, sw, u8: torch.Tensor, zero_point: int):
    return torch.ops.onednn.qlinear_pointwise(u8, 1.0, zero_point, packed.packed, sw,
                                              packed.zero, None, 1.0, 0, torch.float32,
                                              "none", [], "")


def _onednn_matmul(packed: _OnednnWeight, sw, u8: torch.Tensor) -> torch.Tensor:
    return _onednn_call(packed, sw, u8, 0)


def _onednn_matmul_signed(packed: _OnednnWeight, sw, q: torch.Tensor) -> torch.Tensor:
    # two's complement: q + 128 as uint8 is q's bits with bit 7 flipped
    return _onednn_call(packed, sw, torch.bitwise_xor(q.view(torch.uint8), 128), 128)


@dataclass(frozen=True)
class Engine:
    """One x86 quantized engine: why it is missing here (or None), how it packs a weight
    (int8 codes ``[N, K]``, float32 scales ``[N]``), and how it multiplies rows by it,
    float32 ``[M, N]``: ``matmul(packed, sw, u8) -> sw ⊗ Σ u8·w`` (uint8 rows, zero point 0)
    and ``matmul_signed(packed, sw, q) -> sw ⊗ Σ q·w`` (int8 rows fed as ``q + 128`` with
    zero point 128)."""

    name: str
    missing: Callable[[], str | None]
    pack: Callable[[torch.Tensor, torch.Tensor], object]
    matmul: Callable[..., torch.Tensor]
    matmul_signed: Callable[..., torch.Tensor]


ENGINES = {"fbgemm": Engine("fbgemm", _fbgemm_missing, _fbgemm_pack, _fbgemm_matmul,
                            _fbgemm_matmul_signed),
           "onednn": Engine("onednn", _onednn_missing, _onednn_pack, _onednn_matmul,
                            _onednn_matmul_signed)}


def engine_exactness(name: str) -> str | None:
    """None if engine ``name`` sums ``u8 × s8`` products exactly on this CPU, else why not.

    Runs the ``zp128`` feed once per process on inputs that saturate an int16 pair sum
    (``u = 255`` against weights ``127`` and ``−128``) at 1, 8 and 64 rows, and compares with
    int64 sums.  Engines without VNNI fail it; they get the ``split7`` feed only.
    """
    engine = ENGINES[name]
    if name not in _exactness:
        reason = engine.missing()
        if reason is None:
            reason = _saturation_check(engine)
        _exactness[name] = reason
    return _exactness[name]


def _saturation_check(engine: Engine) -> str | None:
    k, n = 256, 16
    gen = torch.Generator().manual_seed(7)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    w[0], w[1] = 127, -128  # every pair 255·127·2 or 255·(−128)·2: far past int16
    sw = torch.ones(n)
    try:
        packed = engine.pack(w, sw)
        for m in (1, 8, 64):
            q = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
            q[0] = 127  # fed as u = 255
            got = engine.matmul_signed(packed, sw, q)
            want = q.long() @ w.long().t()
            if not torch.equal(got.double(), want.double()):
                err = float((got.double() - want).abs().max())
                return (f"the {engine.name} engine's u8×s8 sums are not exact on this CPU (off "
                        f"by up to {err:.0f} at {m} rows: int16 pair saturation, no VNNI); "
                        "use its split7 feed")
    except Exception as exc:  # noqa: BLE001 - a failing engine is unavailable
        return f"the {engine.name} engine failed: {type(exc).__name__}: {str(exc)[:200]}"
    return None


# ---------------------------------------------------------------------------- the kernel


@dataclass
class EngineState:
    """A weight packed for one engine and feed, and its epilogue vectors."""

    engine: Engine
    feed: str
    packed: object
    scale: torch.Tensor       # float32 [N]: the scales packed with the weight (sw, or 1)
    sw: torch.Tensor          # float32 [N]
    corr: torch.Tensor        # float32 [1|2, N]: colsum, then zw if any is non-zero (× scale)
    k: int


def prepare_engine(w: QuantWeight, engine: str, feed: str) -> EngineState:
    """Pack ``w`` once for ``engine`` (a key of :data:`ENGINES`) and ``feed`` (:data:`FEEDS`).

    ``zp128`` packs the weight scales ``sw`` (the engine applies them for free); ``split7``
    packs unit scales, so that its two row blocks add up as exact integers before any
    rounding (their sum holds the large ``128·Σ w`` the epilogue removes again)."""
    codes, zw = int8_codes(w)  # [N, K] int8, [N] int32
    sw = w.scale.reshape(-1).float().contiguous()
    colsum = codes.sum(dim=1, dtype=torch.int32) - w.k * zw
    scale = sw if feed == "zp128" else torch.ones_like(sw)
    rows = [colsum.float()]
    if bool(zw.any()):
        rows.append(zw.float())
    eng = ENGINES[engine]
    return EngineState(eng, feed, eng.pack(codes, scale), scale, sw,
                       torch.stack(rows) * scale, w.k)


def run_engine(st: EngineState, x: torch.Tensor, bias, act) -> torch.Tensor:
    """``[M, K]`` rows -> ``[M, N]``: lowbit's int8 rows through the engine, then the
    epilogue of the module docstring."""
    q, sx, zx = act.quantize(x)  # int8 [M, K], float32 [M|1, 1]
    m = q.shape[0]
    if st.feed == "zp128":
        e = st.engine.matmul_signed(st.packed, st.scale, q)  # sw ⊗ Σ q·w
        zx_eff = zx
    else:
        bits = q.view(torch.uint8)  # u = q + 128 is these bits with bit 7 flipped
        u2 = torch.empty(2 * m, q.shape[1], dtype=torch.uint8)
        torch.bitwise_and(bits, 127, out=u2[:m])        # a = u mod 128
        torch.ge(q, 0, out=u2[m:].view(torch.bool))      # b = (u >= 128) = (q >= 0)
        both = st.engine.matmul(st.packed, st.scale, u2)  # Σ a·w; Σ b·w (integers)
        e = both[:m].add_(both[m:], alpha=128.0)         # Σ u·w
        zx_eff = zx + 128.0
    # zp128: sw ⊗ Σ(q−zx)(w−zw); split7: Σ(u−zx')(w−zw), exact integers
    e = e.addr_(zx_eff.reshape(-1).expand(m), st.corr[0], alpha=-1)
    if st.corr.shape[0] > 1:  # weight zero points: Σ_k q (or u) per row
        rowsum = q.sum(dim=1, dtype=torch.int32).float()
        if st.feed == "split7":
            rowsum = rowsum + 128.0 * st.k
        e = e.addr_(rowsum, st.corr[1], alpha=-1)
    # in place: a fresh [M, N] result costs page faults comparable to the pass itself
    if st.feed == "split7":
        e = e.mul_(sx)
    scale = sx if st.feed == "zp128" else st.sw
    y = e.mul_(scale) if bias is None else torch.addcmul(bias.float(), e, scale, out=e)
    return y.to(x.dtype)


def _supports(w: QuantWeight, act=None) -> str | None:
    reason = act_kernel_reason(act)
    if reason is not None:
        return reason
    if w.k > MAX_K_W8A8:
        return f"K={w.k} > {MAX_K_W8A8} could overflow the int32 accumulator"
    if not w.per_channel:
        return (f"int8 engines take one scale per output channel (block (1, {w.k})); this "
                f"weight has block {w.block_size}")
    return None


def _available(engine: str, feed: str):
    def available(device: torch.device) -> str | None:
        """None when the engine runs here (and, for zp128, sums exactly)."""
        if torch.device(device).type != "cpu":
            return f"the {engine} engine runs on CPUs only"
        if feed == "split7":
            return ENGINES[engine].missing()
        return engine_exactness(engine)
    return available


def kernel_name(engine: str, feed: str) -> str:
    """The registry name of ``engine`` with ``feed``, e.g. ``fbgemm.qlinear(u8 split7)``."""
    return f"{engine}.qlinear(u8 {feed})"


def _register() -> None:
    docs = {"fbgemm": "fbgemm (torch.ops.quantized, x86 engine)",
            "onednn": "oneDNN quantized linear (torch.ops.onednn.qlinear_pointwise)"}
    for engine in ENGINES:
        for feed in FEEDS:
            register(KernelImpl(
                kernel_name(engine, feed), "linear.w8a8", "integer", "cpu",
                lambda w, dt, engine=engine, feed=feed: prepare_engine(w, engine, feed),
                run_engine, (torch.float32,), _supports, _available(engine, feed),
                f"{docs[engine]}, lowbit's per-token codes fed as uint8 ({feed}), "
                "float32 epilogue", {"probe": ("int8", None, "dynamic_int8"),
                                     # packed ScriptObjects / an inductor lowering that
                                     # rejects them: torch.compile cannot trace these
                                     "traceable": False}))


_register()
