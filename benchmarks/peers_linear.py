"""One linear layer through float32, bf16, torch.ao's dynamic int8, ``torch._int_mm`` and lowbit.

Used by ``bench_peers.py`` (see its docstring).  For a layer ``K -> N`` (random weights, bias)
and ``M`` input rows, each method is a callable of no arguments; all methods at one (shape, M)
are timed in interleaved rounds, each sample the mean of ``iters`` back-to-back calls (``iters``
chosen from float32's fastest warm-up call so a sample lasts about ``sample_s``), and
reported as the median and minimum over rounds, and as float32's median divided by it.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import lowbit

log = logging.getLogger("bench_peers")

SHAPES = ((768, 3072), (3072, 768), (4096, 4096))
ROWS = (1, 4, 8, 32, 128, 4096)
LOWBIT = ("w8a8", "w8a16", "w4a16-g128")
#: a method whose warm call is this many times slower than float32 (and over 0.2 s) is not
#: timed at this or larger M for the shape: a reference path could take minutes at 4096 rows
GIVE_UP = 30.0


def _torch_ao_dynamic(linear: nn.Linear) -> nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        return quantize_dynamic(nn.Sequential(linear), {nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)


def layer_methods(linear: nn.Linear) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> ``f(x_float32)``; built once per shape (quantization is not timed)."""
    k = linear.in_features
    w_bf16, b_bf16 = linear.weight.bfloat16(), linear.bias.bfloat16()
    methods: dict[str, Callable] = {
        "float32": lambda x: F.linear(x, linear.weight, linear.bias),
        # a bf16 model: its input is already bf16 (the cast is done once per shape, below)
        "bf16": lambda xb: F.linear(xb, w_bf16, b_bf16),
    }
    try:
        methods["torch.ao dynamic int8 (x86)"] = _torch_ao_dynamic(linear)
    except Exception as exc:  # noqa: BLE001 - reported as skipped by the caller
        methods["torch.ao dynamic int8 (x86)"] = exc
    # the integer GEMM alone: int8 (M, K) @ int8 (K, N) -> int32; inputs quantized beforehand
    w8 = torch.randint(-127, 128, (linear.out_features, k), dtype=torch.int8).t()
    methods["torch._int_mm alone"] = lambda x8: torch._int_mm(x8, w8)
    calib = [torch.randn(32, k)]
    for preset in LOWBIT:
        try:
            qmodel, _ = lowbit.quantize_model(nn.Sequential(linear).eval(), preset, calib)
            methods[f"lowbit {preset}"] = qmodel
        except Exception as exc:  # noqa: BLE001
            methods[f"lowbit {preset}"] = exc
    return methods


def _inputs(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "bf16":
        return x.bfloat16()
    if name == "torch._int_mm alone":
        return torch.randint(-127, 128, x.shape, dtype=torch.int8)
    return x


def _sample(fn, x, iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return (time.perf_counter() - t) / iters


def run_linear(shapes, rows, rounds: int, sample_s: float) -> list[dict]:
    """One dict per (shape, M, method) with median seconds and the ratio to float32."""
    out = []
    torch.manual_seed(0)
    for k, n in shapes:
        linear = nn.Linear(k, n).eval().requires_grad_(False)
        methods = layer_methods(linear)  # outside inference_mode: quantizing copies tensors
        given_up: dict[str, str] = {}
        with torch.inference_mode():
            for m in rows:
                log.info("linear %d->%d M=%d", k, n, m)
                x = torch.randn(m, k)
                live, inputs, notes = {}, {}, {}
                for name, fn in methods.items():
                    row = {"shape": f"{k}->{n}", "K": k, "N": n, "M": m, "method": name}
                    notes[name] = row
                    out.append(row)
                    if isinstance(fn, Exception):
                        row.update(status="skipped", reason=f"{type(fn).__name__}: {fn}"[:300])
                    elif name in given_up:
                        row.update(status="skipped", reason=given_up[name])
                    else:
                        inputs[name] = _inputs(name, x)
                        live[name] = fn
                base = None
                for name, fn in list(live.items()):  # warm up: first calls pick kernels
                    row = notes[name]
                    try:
                        fn(inputs[name])
                        # the fastest of a few calls: one call can be preempted on a busy machine
                        warm = min(_sample(fn, inputs[name], 1) for _ in range(3))
                    except Exception as exc:  # noqa: BLE001
                        row.update(status="skipped", reason=f"{type(exc).__name__}: {exc}"[:300])
                        live.pop(name)
                        continue
                    if name == "float32":
                        base = warm
                    elif warm > GIVE_UP * base and warm > 0.2:
                        reason = (f"warm call {warm / base:.0f}x float32 at M={m}: not timed "
                                  f"at M>={m} for this shape")
                        given_up[name] = reason
                        row.update(status="skipped", reason=reason)
                        live.pop(name)
                iters = max(1, min(200, round(sample_s / max(base, 1e-6))))
                times = {name: [] for name in live}
                for _ in range(rounds):
                    for name, fn in live.items():
                        times[name].append(_sample(fn, inputs[name], iters))
                f32 = statistics.median(times["float32"])
                load = os.getloadavg()[0]  # how busy the machine was while these were timed
                for name in live:
                    med = statistics.median(times[name])
                    notes[name].update(status="ok", median_s=med, min_s=min(times[name]),
                                       iters=iters, speed_vs_float32=f32 / med, load_1min=load)
    return out
