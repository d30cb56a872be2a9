"""The tuning cache: hit, miss, stale environment, corrupt file, read-only directory."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lowbit.kernels import tuning
from lowbit.kernels.tuning import Decision, TuningCache, bucket_of, bucket_span

D = Decision("aten._int_mm", "integer", "float32", 2.5, "measured")


def test_row_buckets_are_powers_of_two_up_to_4096():
    assert [bucket_of(r) for r in (0, 1, 2, 3, 4, 4095, 4096, 10 ** 6)] == \
        [0, 0, 1, 1, 2, 11, 12, 12]
    assert bucket_span(0) == (0, 2) and bucket_span(3) == (8, 16) and bucket_span(12) == (4096,
                                                                                         None)


def test_a_miss_then_a_hit_that_survives_a_new_process(tmp_path):
    cache = TuningCache(tmp_path)
    assert cache.get("k") is None
    cache.put("k", D)
    reread = TuningCache(tmp_path)  # what a new process sees
    got = reread.get("k")
    assert (got.impl, got.path, got.compute, got.speedup, got.source) == \
        ("aten._int_mm", "integer", "float32", 2.5, "cache")


def test_the_file_is_keyed_by_cpu_torch_and_threads(tmp_path):
    cache = TuningCache(tmp_path)
    env = tuning.environment()
    assert set(env) >= {"cpu", "cpu_flags_sha256", "torch", "threads"}
    assert cache.path.name == f"kernels-{tuning.environment_key(env)}.json"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert tuning.environment_key() != tuning.environment_key(env)
    finally:
        torch.set_num_threads(threads)


def test_a_file_from_another_environment_is_ignored_and_replaced(tmp_path, caplog):
    cache = TuningCache(tmp_path)
    stale = dict(cache.env, torch="0.0.1")
    cache.path.write_text(json.dumps({"environment": stale, "entries": {
        "k": D.to_json()}}))
    with caplog.at_level("WARNING", logger="lowbit.kernels.tuning"):
        fresh = TuningCache(tmp_path)
    assert fresh.get("k") is None and "another environment" in caplog.text
    fresh.put("k2", D)
    assert json.loads(cache.path.read_text())["environment"] == cache.env


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"entries": 3})])
def test_a_corrupt_file_means_re_tuning(tmp_path, content, caplog):
    path = TuningCache(tmp_path).path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with caplog.at_level("WARNING", logger="lowbit.kernels.tuning"):
        cache = TuningCache(tmp_path)
    assert cache.get("k") is None and caplog.text
    cache.put("k", D)
    assert TuningCache(tmp_path).get("k") is not None, "rewritten whole"


def test_malformed_entries_are_dropped(tmp_path):
    cache = TuningCache(tmp_path)
    cache.path.write_text(json.dumps({"environment": cache.env, "entries": {
        "good": D.to_json(), "bad": {"impl": 3}, "worse": "x"}}))
    again = TuningCache(tmp_path)
    assert again.get("good") is not None and again.get("bad") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_directory_keeps_results_in_memory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        cache = TuningCache(ro)
        cache.put("k", D)
        assert cache.get("k") is not None and not cache.path.exists()
    finally:
        ro.chmod(0o700)


def test_an_unwritable_cache_path_keeps_results_in_memory(tmp_path, caplog):
    """The same as a read-only directory, for any user: the cache directory is a file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with caplog.at_level("INFO", logger="lowbit.kernels.tuning"):
        cache = TuningCache(blocker)
        cache.put("k", D)
        cache.put("k2", D)
    assert cache.get("k") is not None and cache.get("k2") is not None
    assert caplog.text.count("not writable") == 1, "said once"


def test_the_process_cache_follows_lowbit_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "a"))
    first = tuning.cache()
    assert tuning.cache() is first
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "b"))
    assert tuning.cache() is not first and tuning.cache().directory == tmp_path / "b"


def test_timing_runs_at_least_min_runs_after_a_warm_up():
    calls = []
    seconds = tuning.time_candidate(lambda: calls.append(1))
    assert len(calls) >= tuning.MIN_RUNS + 1 and seconds >= 0.0


class FakeClock:
    """``time.perf_counter`` for the tuner: each call of ``run`` costs ``cost`` seconds."""

    def __init__(self, cost: float):
        self.now, self.cost, self.calls = 0.0, cost, 0

    def perf_counter(self) -> float:
        return self.now

    def run(self) -> None:
        self.calls += 1
        self.now += self.cost


@pytest.mark.parametrize("cost,give_up,calls", [
    (0.010, 1e-3, 1),                    # the warm-up alone is 10x the bound: stop at once
    (0.002, 1e-3, 1 + tuning.MIN_RUNS),  # over the bound after the first timed runs: stop
    (0.002, None, 1 + tuning.MAX_RUNS // 5),  # no bound: until the 20 ms budget is spent
])
def test_timing_stops_as_soon_as_the_answer_is_known(monkeypatch, cost, give_up, calls):
    clock = FakeClock(cost)
    monkeypatch.setattr(tuning.time, "perf_counter", clock.perf_counter)
    assert tuning.time_candidate(clock.run, give_up) == pytest.approx(cost)
    assert clock.calls == calls
