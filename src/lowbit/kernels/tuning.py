"""Kernel choice measured on the machine at hand, and remembered on disk.

For one linear layer format (op, weight format, input format, ``N``, ``K``), compute dtype and
row bucket, :func:`choose` times every candidate that can run it (:func:`time_candidate`) and
keeps the fastest; the answer is cached in memory and in a JSON file per environment (CPU
model and flags, torch version, thread count: :func:`environment`), so a process pays for a
measurement once per machine.  Nothing here knows any CPU: what wins is what ran fastest.

Cache file: ``<dir>/kernels-<environment hash>.json`` with ``dir`` = ``$LOWBIT_CACHE`` or
``~/.cache/lowbit``; written atomically.  A corrupt file or one written for another
environment is ignored (and rewritten after re-tuning); a directory that cannot be written
keeps the results in memory for the process, said once in the log.
``LOWBIT_KERNEL_TUNING=off`` turns measuring off: misses then take the float path by rule.

Row buckets: powers of two from 1 to 4096; rows ``r`` fall in the bucket of the largest power
of two ``<= r``; a bucket is measured at its lower bound.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

#: Lower bounds of the row buckets (the last one covers every larger row count).
ROW_BUCKETS = tuple(1 << i for i in range(13))  # 1 .. 4096
CACHE_VERSION = 1
#: Seconds of timed calls per candidate and bucket (after one warm-up call), at least
#: :data:`MIN_RUNS` calls and at most :data:`MAX_RUNS`.
TIME_BUDGET_S = 0.02
MIN_RUNS, MAX_RUNS = 3, 50
#: A warm-up call this many times over the give-up time ends the timing at once.
WARM_UP_GIVE_UP = 3.0


def bucket_of(rows: int) -> int:
    """Index into :data:`ROW_BUCKETS` of the bucket holding ``rows`` (0 for 0 or 1 row)."""
    index = 0
    for i, lo in enumerate(ROW_BUCKETS):
        if rows >= lo:
            index = i
    return index


def bucket_span(index: int) -> tuple[int, int | None]:
    """``(min_rows, max_rows)`` of bucket ``index`` (``max_rows`` exclusive, None = open);
    the first bucket also holds 0 rows."""
    lo = 0 if index == 0 else ROW_BUCKETS[index]
    hi = ROW_BUCKETS[index + 1] if index + 1 < len(ROW_BUCKETS) else None
    return lo, hi


# ---------------------------------------------------------------------------- environment


def _cpu_info() -> tuple[str, str]:
    """``(model name, flags)`` of this CPU (Linux ``/proc/cpuinfo``; else what platform says)."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def environment() -> dict:
    """What a measurement depends on besides the layer: CPU model and flags, torch, threads."""
    model, flags = _cpu_info()
    return {"cpu": model, "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cache_version": CACHE_VERSION}


def environment_key(env: dict | None = None) -> str:
    """A short hash of :func:`environment`."""
    text = json.dumps(env or environment(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$LOWBIT_CACHE`` or ``~/.cache/lowbit``."""
    return Path(os.environ.get("LOWBIT_CACHE") or Path.home() / ".cache" / "lowbit")


def tuning_enabled() -> bool:
    """False when ``LOWBIT_KERNEL_TUNING`` is ``off`` (or ``0``/``false``/``no``)."""
    return os.environ.get("LOWBIT_KERNEL_TUNING", "on").lower() not in ("off", "0", "false", "no")


# ---------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class Decision:
    """The fastest candidate of one key: implementation name and path, compute dtype, its
    speed against the float path (float time / its time), and where it came from
    (``measured`` now, ``cache``, or ``rule`` when nothing was measured)."""

    impl: str
    path: str
    compute: str
    speedup: float | None
    source: str

    def to_json(self) -> dict:
        return {"impl": self.impl, "path": self.path, "compute": self.compute,
                "speedup": self.speedup}


class TuningCache:
    """Decisions by key, in memory and in one JSON file per environment (see module doc)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.env = environment()
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.directory / f"kernels-{environment_key(self.env)}.json"
        self._entries: dict[str, dict] = {}
        self._writable = True
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("kernel tuning cache %s unreadable (%s); re-tuning", self.path, exc)
            return
        if not isinstance(data, dict) or data.get("environment") != self.env \
                or not isinstance(data.get("entries"), dict):
            log.warning("kernel tuning cache %s is for another environment or malformed; "
                        "re-tuning", self.path)
            return
        self._entries = {k: v for k, v in data["entries"].items() if _valid_entry(v)}

    def get(self, key: str) -> Decision | None:
        """The cached decision for ``key`` (source ``cache``), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        return Decision(entry["impl"], entry["path"], entry["compute"], entry.get("speedup"),
                        "cache")

    def put(self, key: str, decision: Decision) -> None:
        """Remember ``decision`` and write the file (atomically); in memory only if the
        directory cannot be written."""
        with self._lock:
            self._entries[key] = decision.to_json()
            if self._writable:
                self._write()

    def _write(self) -> None:
        text = json.dumps({"environment": self.env, "entries": self._entries}, indent=1,
                          sort_keys=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            self._writable = False
            log.info("kernel tuning cache %s not writable (%s); keeping results in memory",
                     self.path, exc)
            try:
                tmp.unlink()
            except OSError:
                pass


def _valid_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("impl"), str)
            and entry.get("path") in ("integer", "dense", "reference")
            and isinstance(entry.get("compute"), str))


_cache: TuningCache | None = None
_cache_lock = threading.Lock()


def cache() -> TuningCache:
    """The process's cache (created on first use from :func:`default_cache_dir`)."""
    global _cache
    with _cache_lock:
        if _cache is None or _cache.directory != default_cache_dir() \
                or _cache.env != environment():
            _cache = TuningCache()
        return _cache


# ---------------------------------------------------------------------------- measuring


def time_candidate(run: Callable[[], object], give_up_after: float | None = None) -> float:
    """Fastest seconds of ``run()`` after one untimed warm-up call (the minimum: other work on
    a shared machine only ever adds time): at least :data:`MIN_RUNS` calls, then until
    :data:`TIME_BUDGET_S` is spent or :data:`MAX_RUNS` calls.  A candidate whose fastest of
    its first :data:`MIN_RUNS` calls takes over ``give_up_after`` seconds is not timed further
    (it has lost already), nor is one whose warm-up call alone takes
    :data:`WARM_UP_GIVE_UP` times that."""
    t0 = time.perf_counter()
    run()  # first calls pay for one-time setup (primitive creation, packing caches)
    warm_up = time.perf_counter() - t0
    if give_up_after is not None and warm_up > WARM_UP_GIVE_UP * give_up_after:
        return warm_up  # so slow that no setup cost explains it
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_RUNS or (time.perf_counter() - start < TIME_BUDGET_S
                                     and len(times) < MAX_RUNS):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if give_up_after is not None and len(times) == MIN_RUNS and min(times) > give_up_after:
            break
    return min(times)
