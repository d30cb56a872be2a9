"""Observer update cost and the entropy threshold search, as ratios in one run.

Not a test.  For every observer, the cost of ``update(x)`` on a 1M-element float32
tensor is divided by the cost of a plain ``x.abs().amax()`` pass measured in the
same run, round-robin (one timing of each per round, in a fresh random order) so
that load changes on a shared machine hit every candidate alike.  Reported: the
median time of each, the ratio of medians and the median of per-round ratios.
Goal: <= 3x for percentile and entropy.  Then the vectorised KL threshold search
over a full 2048-bin histogram, in ms (goal: <= 50 ms).

    python benchmarks/bench_observers.py [--size 1048576] [--rounds 40] [--out PATH]

Writes JSON (machine info, torch version, every number) to
benchmarks/results/observers.json by default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from lowbit.config import QuantSpec
from lowbit.observers import make_observer
from lowbit.observers.entropy import entropy_threshold
from lowbit.types import int8, uint8

METHODS = ("minmax", "moving_average", "percentile:99.99", "mse", "entropy", "auto")
GOALS = {"percentile:99.99": 3.0, "entropy": 3.0}
KL_GOAL_MS = 50.0
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "observers.json"


def machine_info() -> dict:
    """Where the numbers come from."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg_1_5_15": list(load) if load else None}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_updates(size: int, rounds: int, warmup: int, seed: int) -> dict:
    """Round-robin timings of the baseline and every observer's update."""
    torch.manual_seed(seed)
    x = torch.randn(size)
    observers = {m: make_observer(QuantSpec(method=m)) for m in METHODS}
    jobs = {"baseline abs().amax()": lambda: x.abs().amax()}
    jobs.update({m: (lambda o=o: o.update(x)) for m, o in observers.items()})
    times: dict[str, list[float]] = {k: [] for k in jobs}
    order = list(jobs)
    rng = random.Random(seed)
    for r in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            t = _timed(jobs[name])
            if r >= warmup:
                times[name].append(t)
    base = times["baseline abs().amax()"]
    out = {}
    for name, ts in times.items():
        per_round = [t / b for t, b in zip(ts, base)]
        out[name] = {"median_ms": statistics.median(ts) * 1e3,
                     "ratio_of_medians": statistics.median(ts) / statistics.median(base),
                     "median_per_round_ratio": statistics.median(per_round),
                     "goal_ratio": GOALS.get(name)}
    return out


def bench_kl(repeats: int, seed: int) -> dict:
    """The entropy observer's threshold search (re-binned view + KL over every candidate)
    on a 1M-value histogram whose 2048 bins are all in use."""
    torch.manual_seed(seed)
    out = {}
    for qtype in (int8, uint8):
        obs = make_observer(QuantSpec(qtype=qtype, method="entropy"))
        x = torch.randn(1_000_000).abs()
        obs.update(x * (0.999 * 8.0 / float(x.max())))   # fills [0, 8): the last bin is in use
        entropy_threshold(obs)                             # warm-up
        ts = [_timed(lambda: entropy_threshold(obs)) for _ in range(repeats)]
        _, kept, bins = entropy_threshold(obs)
        out[qtype.name] = {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3,
                           "bins": bins, "bins_kept": kept, "goal_ms": KL_GOAL_MS}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 20, help="elements per update")
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    info = machine_info()
    updates = bench_updates(args.size, args.rounds, args.warmup, args.seed)
    kl = bench_kl(max(5, args.rounds // 2), args.seed)
    info["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {"benchmark": "observers", "size": args.size, "rounds": args.rounds,
              "machine": info, "update": updates, "kl_search_2048_bins": kl}

    print(f"observer update on {args.size} float32 values, {args.rounds} interleaved rounds "
          f"(torch {torch.__version__}, {info['torch_threads']} threads, "
          f"load {info['loadavg_1_5_15']})")
    print(f"{'method':24s} {'median ms':>10s} {'ratio':>7s} {'per-round':>10s} {'goal':>6s}")
    for name, row in updates.items():
        goal = f"{row['goal_ratio']:.0f}x" if row["goal_ratio"] else ""
        print(f"{name:24s} {row['median_ms']:10.3f} {row['ratio_of_medians']:7.2f} "
              f"{row['median_per_round_ratio']:10.2f} {goal:>6s}")
    for name, row in kl.items():
        print(f"entropy threshold search, {name} ({row['bins']} bins, kept "
              f"{row['bins_kept']}): median {row['median_ms']:.2f} ms, min {row['min_ms']:.2f} ms "
              f"(goal {KL_GOAL_MS:.0f} ms)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
