"""What the 2-process tests compute, shared by the spawned ranks (dist_worker.py) and the
one-process references in the tests.

Each observer case feeds batches of seeded data; rank ``r`` of ``w`` feeds its shard
(``shard_batches``), one process feeds them all.  The cases cover every observer kind, both
histogram sides, per-channel states, a rank whose data needs a wider histogram grid than
the other's, and a rank that sees nothing.
"""

from __future__ import annotations

import torch
from torch import nn

import lowbit
from lowbit.config import QuantSpec
from lowbit.distributed import shard_batches
from lowbit.observers import MinMaxObserver, PercentileObserver, make_observer
from lowbit.types import PerChannel, PerTensor, Scheme, int8, uint8, int4

SIGNED_AFFINE = dict(qtype=int8, scheme=Scheme.AFFINE)
SIGNED_SYM = dict(qtype=int8, scheme=Scheme.SYMMETRIC)

#: name -> (spec kwargs, how the data is made)
OBSERVER_CASES = {
    "minmax_tensor": (dict(SIGNED_AFFINE, method="minmax"), "normal"),
    "minmax_channel": (dict(SIGNED_SYM, method="minmax", granularity=PerChannel(1)), "normal"),
    "moving_average": (dict(SIGNED_AFFINE, method="moving_average"), "normal"),
    "percentile_sym": (dict(SIGNED_SYM, method="percentile:99.9"), "normal"),
    "percentile_affine": (dict(SIGNED_AFFINE, method="percentile:99"), "grow"),
    "percentile_relu": (dict(qtype=uint8, scheme=Scheme.SYMMETRIC, method="percentile"), "relu"),
    "mse_tensor": (dict(SIGNED_AFFINE, method="mse"), "grow"),
    "mse_channel": (dict(SIGNED_SYM, method="mse", granularity=PerChannel(1)), "normal"),
    "entropy": (dict(SIGNED_SYM, method="entropy"), "heavy"),
    "entropy_int4": (dict(qtype=int4, scheme=Scheme.SYMMETRIC, method="entropy"), "grow"),
    "auto": (dict(SIGNED_AFFINE, method="auto"), "heavy"),
    "auto_empty_rank": (dict(SIGNED_AFFINE, method="auto"), "first_half_only"),
    "minmax_empty_rank": (dict(SIGNED_SYM, method="minmax"), "first_half_only"),
}

N_BATCHES = 6


class NoPlanMinMax(MinMaxObserver):
    """A user's observer without a reduction plan: combined by gather + merge."""

    def _reduce_ops(self):
        return None


class NoPlanPercentile(PercentileObserver):
    def _reduce_ops(self):
        return None


FALLBACK_CASES = {"fallback_minmax": (NoPlanMinMax, "minmax_channel"),
                  "fallback_percentile": (NoPlanPercentile, "percentile_affine")}


def batches(kind: str, seed: int) -> list[torch.Tensor | None]:
    """``N_BATCHES`` tensors ``[16, 32]``; ``None`` marks a batch that is skipped."""
    g = torch.Generator().manual_seed(seed)
    out: list[torch.Tensor | None] = []
    for i in range(N_BATCHES):
        x = torch.randn(16, 32, generator=g)
        if kind == "grow":      # later batches (the last rank's) are far wider
            x = x * (1.0 + 7.0 * i)
        elif kind == "relu":
            x = x.relu() * 3.0
        elif kind == "heavy":
            x = x * torch.rand(16, 32, generator=g).pow(4) * 20.0
        out.append(None if kind == "first_half_only" and i >= N_BATCHES // 2 else x)
    return out


def _spec(kwargs: dict) -> QuantSpec:
    kwargs = dict(kwargs)
    kwargs.setdefault("granularity", PerTensor())
    return QuantSpec(**kwargs)


def observe_cases(rank: int, world: int) -> list[tuple[str, object]]:
    """Every case's observer after feeding rank ``rank``'s shard (``world=1``: all data)."""
    out = []
    for i, (name, (spec, kind)) in enumerate(OBSERVER_CASES.items()):
        obs = make_observer(_spec(spec))
        for x in shard_batches(batches(kind, 100 + i), rank, world):
            if x is not None:
                obs.update(x)
        out.append((name, obs))
    for name, (cls, base) in FALLBACK_CASES.items():
        spec, kind = OBSERVER_CASES[base]
        obs = cls(_spec(spec))
        for x in shard_batches(batches(kind, 7), rank, world):
            obs.update(x)
        out.append((name, obs))
    return out


def observer_tensors(observers) -> dict[str, torch.Tensor]:
    """State and chosen range of every observer, flat, for comparing ranks and references."""
    out = {}
    for name, obs in observers:
        for key, value in obs.state_dict().items():
            out[f"{name}.state.{key}"] = value
        lo, hi = obs.clip_range()
        out[f"{name}.lo"], out[f"{name}.hi"] = lo, hi
    return out


# ---------------------------------------------------------------------- layer-wise models


class Block(nn.Module):
    def __init__(self, width: int, norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class StandIn(nn.Module):
    """A stand-in decoder: repeated residual MLP blocks in a ModuleList, then a head."""

    def __init__(self, width: int = 64, depth: int = 2, norm: bool = True, dyadic: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(Block(width, norm) for _ in range(depth))
        self.head = nn.Linear(width, 8)
        if dyadic:  # weights k/16, small: every activation and XᵀX sum is exact in float64
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.round(p * 16.0) / 16.0)

        self.eval()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def model_batches(dyadic: bool, n: int = 4, width: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        x = torch.randn(2, 8, width, generator=g)
        out.append(torch.round(x * 4.0) / 4.0 if dyadic else x)
    return out


#: name -> (model kwargs, quantize_model kwargs)
MODEL_CASES = {
    "gptq_exact": (dict(norm=False, dyadic=True),
                   dict(recipe="w4a16-g64", algorithms=[lowbit.GPTQ(hessian_dtype="float64")],
                        sequential=False)),
    "gptq_sequential": (dict(norm=True),
                        dict(recipe="w4a16-g64", algorithms=[lowbit.GPTQ()])),
    "smoothquant_awq_gptq": (dict(norm=True),
                             dict(recipe="w8a8-static",
                                  algorithms=[lowbit.SmoothQuant(), lowbit.AWQ(grid=5),
                                              lowbit.GPTQ()])),
    "calibrate_entropy": (dict(norm=True), dict(recipe="act_entropy")),
}


def act_entropy_recipe():
    """Static int8 activations ranged by the entropy observer, int8 weights."""
    spec_w = QuantSpec(qtype=int8, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0))
    spec_a = QuantSpec(qtype=int8, scheme=Scheme.AFFINE, method="entropy")
    return lowbit.Recipe((lowbit.Rule(lowbit.ByType(nn.Linear), lowbit.LayerConfig(spec_w, spec_a)),),
                         name="act_entropy")


def quantize_case(name: str, rank: int, world: int):
    """``(fake-quant model state, records)`` of case ``name`` on rank ``rank``'s shard."""
    model_kw, q_kw = MODEL_CASES[name]
    q_kw = dict(q_kw)
    recipe = q_kw.pop("recipe")
    recipe = act_entropy_recipe() if recipe == "act_entropy" else recipe
    data = shard_batches(model_batches(model_kw.get("dyadic", False)), rank, world)
    model = StandIn(**model_kw)
    fake, records = lowbit.quantize_model(model, recipe, data, convert=False, **q_kw)
    return {k: v.detach().clone() for k, v in fake.state_dict().items()}, records
