"""``prepare_conv2d`` / ``prepare_conv1d``: quantized convolutions on the same kernels.

A conv weight ``[O, I/groups, kh, kw]`` is stored in its 2-D view ``[O, K]`` with
``K = I/groups·kh·kw`` (as ``lowbit.nn`` stores it).  Two routes:

* **1×1 as matmul** (1×1 kernel, stride 1, no padding, one group): the input becomes rows
  ``[N·H·W, C]`` (channels last) and runs on a :class:`PreparedLinear`, whose plan chooses
  per row count exactly as for a linear layer.
* **any other conv**, op ``conv2d``: ``reference`` (fake-quantized input, dequantized weight,
  ``F.conv2d``), ``dense`` (``F.conv2d`` on a dequantized-once weight) or ``integer``:
  im2col (``F.unfold``) and, per group, the integer linear kernels on the patch rows
  ``[N·L, K]`` (``L`` output positions).  ``auto`` does not time conv2d candidates yet, so
  it runs the float conv and says so in the reason.

Activations: ``act=None`` or ``"dynamic_int8_tensor"`` — one (scale, zero) for the whole
input, computed from the input itself, so quantizing unfolded patches gives exactly the codes
of the quantized input (padding is 0.0, code ``z``).  Per-token scales have no meaning for
a patch that mixes pixels and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..types import qtype_from_name
from .act import ActQuantizer
from .dispatch import Choice, plan, unusable
from .formats import ActFormat
from .linear import PreparedLinear
from .registry import KernelImpl, find, linear_op, register
from .weights import QuantWeight, quant_weight

CONV_ACTS = (None, "dynamic_int8_tensor")


def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, int) and i >= 0 for i in t):
        raise ConfigError(name, v, "an int >= 0 or a pair of them", fix=f"e.g. {name}=1")
    return t


@dataclass(frozen=True)
class ConvWeight:
    """A quantized conv weight and its geometry (``weight`` is the ``[O, K]`` view)."""

    weight: QuantWeight
    shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    act: str | None = None

    device = property(lambda self: self.weight.device)
    qtype = property(lambda self: self.weight.qtype)
    block_size = property(lambda self: self.weight.block_size)
    n = property(lambda self: self.weight.n)
    k = property(lambda self: self.weight.k)

    @property
    def pointwise(self) -> bool:
        """1×1 kernel, stride 1, no padding, one group: a matmul over channels."""
        return (self.shape[2:] == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                and self.groups == 1)

    def dense_weight(self, dtype) -> torch.Tensor:
        """The dequantized weight ``[O, I/groups, kh, kw]`` in ``dtype``."""
        return self.weight.dequantize(torch.float32).reshape(self.shape).to(dtype)

    def conv(self, x, w, bias):
        """``F.conv2d`` with this geometry."""
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output height and width for an input of ``h × w``."""
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                     zip((h, w), self.padding, self.dilation, self.shape[2:], self.stride))


def _fake_input(x: torch.Tensor, act: ActQuantizer | None, reference: bool) -> torch.Tensor:
    if act is None:
        return x
    rows = x.reshape(1, -1)
    return (act.reference(rows) if reference else act.fake(rows)).reshape(x.shape)


def _run_reference(cw: ConvWeight, x, bias, act):
    w = cw.weight.dequantize(torch.float32).reshape(cw.shape)
    b = None if bias is None else bias.float()
    return cw.conv(_fake_input(x, act, True).float(), w, b).to(x.dtype)


@dataclass
class _DenseConv:
    cw: ConvWeight
    weight: torch.Tensor
    compute: torch.dtype


def _run_dense(st: _DenseConv, x, bias, act):
    x_hat = _fake_input(x, act, False).to(st.compute)
    y = st.cw.conv(x_hat, st.weight, None).to(x.dtype)
    return y if bias is None else y.add_(bias.reshape(1, -1, 1, 1))


@dataclass
class _Im2col:
    cw: ConvWeight
    groups: list[PreparedLinear]


def _prepare_im2col(cw: ConvWeight, compute) -> _Im2col:
    o_g = cw.shape[0] // cw.groups
    return _Im2col(cw, [PreparedLinear(cw.weight.rows(g * o_g, (g + 1) * o_g), cw.act, "integer")
                        for g in range(cw.groups)])


def _run_im2col(st: _Im2col, x, bias, act):
    cw = st.cw
    n, _, h, w = x.shape
    ho, wo = cw.out_size(h, w)
    cols = F.unfold(x, cw.shape[2:], cw.dilation, cw.padding, cw.stride)  # [N, C·kh·kw, L]
    k_g, o_g = cols.shape[1] // cw.groups, cw.shape[0] // cw.groups
    outs = []
    for g, lin in enumerate(st.groups):
        rows = cols[:, g * k_g:(g + 1) * k_g].transpose(1, 2).reshape(-1, k_g)  # [N·L, K]
        b = None if bias is None else bias[g * o_g:(g + 1) * o_g]
        outs.append(lin(rows, b, act))  # [N·L, O/groups]
    y = torch.cat(outs, dim=1).reshape(n, ho * wo, -1).transpose(1, 2)  # [N, O, L]
    return y.reshape(n, -1, ho, wo)


def _im2col_supports(cw: ConvWeight, act=None) -> str | None:
    o_g = cw.shape[0] // cw.groups
    try:
        rows = cw.weight.rows(0, o_g)  # every group has the same format
    except InputError as exc:
        return str(exc)
    op = linear_op(rows, cw.act)
    reason = unusable(find(op, "integer", rows.device), rows, ActFormat.from_mode(cw.act))
    return None if reason is None else f"im2col needs an integer {op} kernel: {reason}"


register(KernelImpl("reference", "conv2d", "reference", "any", lambda cw, dt: cw,
                    _run_reference, (torch.float32,), doc="dequantize + F.conv2d, float32"))
register(KernelImpl("F.conv2d", "conv2d", "dense", "any",
                    lambda cw, dt: _DenseConv(cw, cw.dense_weight(dt), dt), _run_dense,
                    (torch.float32, torch.bfloat16, torch.float16),
                    doc="dequantized-once weight, float conv"))
register(KernelImpl("im2col+integer", "conv2d", "integer", "any", _prepare_im2col, _run_im2col,
                    (torch.float32,), supports=_im2col_supports,
                    doc="F.unfold patches through the integer linear kernels"))


class PreparedConv2d:
    """A quantized conv weight bound to its kernel plan; call it as ``conv(x, bias)``.

    ``pointwise`` convs delegate to ``linear`` (a :class:`PreparedLinear`); others follow
    ``plan`` (op ``conv2d``).  ``path``, ``kernel``, ``reason`` and
    ``last`` are as on :class:`PreparedLinear`.
    """

    def __init__(self, cw: ConvWeight, path: str = "auto", act_impl: str = "eager"):
        self.cw = cw
        self._requested = path
        self._act = None if cw.act is None else ActQuantizer(cw.act, act_impl)
        self._act_impl = act_impl
        self.linear = PreparedLinear(cw.weight, cw.act, path, act_impl) if cw.pointwise else None
        self._plans = {}
        self._states: dict[tuple[int, torch.dtype], object] = {}
        self.plan = None if cw.pointwise else self.plan_for(torch.float32)
        self.last: Choice | None = None

    def plan_for(self, dtype: torch.dtype):
        """The conv plan for inputs of ``dtype`` (general convs only)."""
        if dtype not in self._plans:
            self._plans[dtype] = plan("conv2d", self.cw, dtype, self._requested)
        return self._plans[dtype]

    def _summary(self, attr: str):
        if self.linear is not None:
            return getattr(self.linear, attr)
        paths, kernels, reasons = self.plan.summary()
        return {"path": paths, "kernel": kernels}.get(attr, reasons)

    path = property(lambda self: self._summary("path"))
    kernel = property(lambda self: self._summary("kernel"))
    reason = property(lambda self: self._summary("reason"))

    def record_fields(self) -> dict:
        """``path``, ``kernel`` and ``kernel_reason`` for the layer's LayerRecord."""
        return {"kernel_path": self.path, "kernel": self.kernel, "kernel_reason": self.reason}

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The conv of ``x`` ``[N, C, H, W]`` (float); the result has ``x``'s dtype."""
        cw = self.cw
        c_in = cw.shape[1] * cw.groups
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 \
                or x.shape[1] != c_in:
            raise InputError(f"x must be a float [N, {c_in}, H, W] tensor; got "
                             f"{getattr(x, 'dtype', type(x).__name__)} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        if bias is not None and (bias.shape != (cw.shape[0],) or not bias.is_floating_point()):
            raise InputError(f"bias has shape {tuple(bias.shape)} and dtype {bias.dtype}; "
                             f"pass a float [{cw.shape[0]}] tensor or None")
        act = None if self._act is None else ActQuantizer.for_tensor(x, self._act_impl)
        if self.linear is not None:
            n, c, h, w = x.shape
            rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # [N·H·W, C], channels last
            y = self.linear(rows, bias, act)
            self.last = self.linear.last
            return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)
        ho, wo = cw.out_size(x.shape[2], x.shape[3])
        choice = self.plan_for(x.dtype).select(x.shape[0] * ho * wo)  # GEMM rows N·L
        key = (id(choice.impl), choice.compute)
        if key not in self._states:
            self._states[key] = choice.impl.prepare(cw, choice.compute)
        self.last = choice
        return choice.impl.run(self._states[key], x, bias, act)


def prepare_conv2d(qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qtype,
                   block_size, weight_shape, *, stride=1, padding=0, dilation=1, groups: int = 1,
                   act: str | None = None, path: str = "auto",
                   act_impl: str = "eager") -> PreparedConv2d:
    """Bind a quantized conv weight (2-D view ``[O, I/groups·kh·kw]``) to its kernels.

    weight_shape: ``(O, I/groups, kh, kw)``.  stride, padding (zeros; ``"valid"`` or ints),
    dilation, groups: as ``F.conv2d``.  act: None or ``"dynamic_int8_tensor"``.  path,
    act_impl: as :func:`~lowbit.kernels.linear.prepare_linear`.
    """
    if act not in CONV_ACTS:
        raise ConfigError("act", act, f"one of {CONV_ACTS} for a conv",
                          fix="convs quantize their input with one scale per tensor: "
                              "act='dynamic_int8_tensor' (or None for a float input)")
    if padding == "valid":
        padding = 0
    shape = tuple(weight_shape)
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError("weight_shape", weight_shape, "(O, I/groups, kh, kw), positive ints",
                          fix="pass the float conv weight's shape")
    if not isinstance(groups, int) or groups < 1 or shape[0] % groups:
        raise ConfigError("groups", groups, f"a positive int dividing O={shape[0]}",
                          fix="pass the conv's groups")
    packed = qtype_from_name(qtype).bits <= 4 and qdata.dtype == torch.uint8
    weight = quant_weight(qdata, scale, zero_point, qtype, block_size,
                          k=shape[1] * shape[2] * shape[3] if packed else None)
    if (weight.n, weight.k) != (shape[0], shape[1] * shape[2] * shape[3]):
        raise InputError(f"the quantized weight is [{weight.n}, {weight.k}] but weight_shape "
                         f"{shape} flattens to [{shape[0]}, {shape[1] * shape[2] * shape[3]}]; "
                         "pass the weight's own shape")
    cw = ConvWeight(weight, shape, _pair(stride, "stride"), _pair(padding, "padding"),
                    _pair(dilation, "dilation"), groups, act)
    return PreparedConv2d(cw, path, act_impl)


class PreparedConv1d:
    """A 1-D conv run as a 2-D conv of height 1 (``conv2d`` holds the plan)."""

    def __init__(self, conv2d: PreparedConv2d):
        self.conv2d = conv2d

    path = property(lambda self: self.conv2d.path)
    kernel = property(lambda self: self.conv2d.kernel)
    reason = property(lambda self: self.conv2d.reason)
    last = property(lambda self: self.conv2d.last)

    def record_fields(self) -> dict:
        """``path``, ``kernel`` and ``kernel_reason`` for the layer's LayerRecord."""
        return self.conv2d.record_fields()

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The conv of ``x`` ``[N, C, L]``; the result has ``x``'s dtype."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise InputError(f"x must be a float [N, C, L] tensor; got shape "
                             f"{tuple(getattr(x, 'shape', ()))}")
        return self.conv2d(x.unsqueeze(2), bias).squeeze(2)


def prepare_conv1d(qdata, scale, zero_point, qtype, block_size, weight_shape, *, stride=1,
                   padding=0, dilation=1, groups: int = 1, act: str | None = None,
                   path: str = "auto", act_impl: str = "eager") -> PreparedConv1d:
    """:func:`prepare_conv2d` for a 1-D conv: ``weight_shape`` is ``(O, I/groups, k)``."""
    shape = tuple(weight_shape)
    if len(shape) != 3:
        raise ConfigError("weight_shape", weight_shape, "(O, I/groups, k)",
                          fix="pass the float Conv1d weight's shape")
    one = lambda v: (0 if v == "valid" else v) if isinstance(v, (int, str)) else v[0]  # noqa: E731
    return PreparedConv1d(prepare_conv2d(
        qdata, scale, zero_point, qtype, block_size, (shape[0], shape[1], 1, shape[2]),
        stride=(1, one(stride)), padding=(0, one(padding)), dilation=(1, one(dilation)),
        groups=groups, act=act, path=path, act_impl=act_impl))
