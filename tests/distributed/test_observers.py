"""Observer states reduced across 2 gloo ranks equal one process on the union of the shards.

The ranks are spawned once per session (conftest.two_rank_run).  Bit-exact where the
combination is exact (min/max, histogram counts on the agreed power-of-two grid, and every
range chosen from them: percentile, per-tensor MSE, entropy, auto); within float64
round-off where sums are reordered (per-channel MSE tables).  The moving average is
order-dependent: the reduction equals ``merge`` of the shards' observers, as documented.
"""

from __future__ import annotations

import pytest
import torch

import dist_cases
from lowbit.runtime import one_thread

EXACT = [n for n in dist_cases.OBSERVER_CASES if n not in ("moving_average", "mse_channel")]
EXACT += list(dist_cases.FALLBACK_CASES)


def _case(tensors: dict, name: str) -> dict:
    prefix = f"obs.{name}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def one_process():
    """Every case's observer fed all batches in one process (one thread, as each rank)."""
    with one_thread():
        return dist_cases.observer_tensors(dist_cases.observe_cases(0, 1))


@pytest.fixture(scope="module")
def merged_shards():
    """Every case's observer as ``merge`` of the two shards' observers, in one process."""
    with one_thread():
        first, second = dist_cases.observe_cases(0, 2), dist_cases.observe_cases(1, 2)
        for (_, a), (_, b) in zip(first, second):
            a.merge(b)
        return dist_cases.observer_tensors(first)


def test_every_case_is_reduced_except_inside_local(two_rank_run):
    n_cases = len(dist_cases.OBSERVER_CASES) + len(dist_cases.FALLBACK_CASES)
    for tensors in two_rank_run[:2]:
        assert tensors["counts"].tolist() == [0, n_cases, 1]  # [inside local(), after, dist]


def test_both_ranks_hold_identical_states(two_rank_run):
    rank0, rank1 = two_rank_run[0], two_rank_run[1]
    obs0 = {k: v for k, v in rank0.items() if k.startswith("obs.")}
    assert obs0 and obs0.keys() == {k for k in rank1 if k.startswith("obs.")}
    for key, value in obs0.items():
        assert torch.equal(value, rank1[key]), key


@pytest.mark.parametrize("name", EXACT)
def test_reduced_state_and_range_are_bit_exact_with_one_process(two_rank_run, one_process, name):
    reduced = _case(two_rank_run[0], name)
    expected = {k[len(name) + 1:]: v for k, v in one_process.items()
                if k.startswith(name + ".")}
    assert reduced.keys() == expected.keys()
    for key in expected:
        assert torch.equal(reduced[key], expected[key]), f"{name}.{key}"


def test_a_rank_with_a_wider_histogram_grid_is_aligned_not_lost(two_rank_run, one_process):
    """percentile_affine: rank 1's batches are up to 36x wider, so its histogram starts on a
    coarser grid; the counts of rank 0 are re-binned onto it and every value is counted."""
    reduced = _case(two_rank_run[0], "percentile_affine")
    assert float(reduced["state.hist.counts"].sum()) == 6 * 16 * 32
    assert int(reduced["state.n_seen"]) == 6 * 16 * 32


@pytest.mark.parametrize("name", ["auto_empty_rank", "minmax_empty_rank"])
def test_a_rank_that_saw_nothing_takes_the_others_state(two_rank_run, one_process, name):
    reduced = _case(two_rank_run[1], name)       # rank 1 observed no batch of these
    assert int(reduced["state.n_seen"]) == 3 * 16 * 32
    assert torch.equal(reduced["hi"], one_process[f"{name}.hi"])


def test_per_channel_mse_tables_sum_up_to_float_round_off(two_rank_run, one_process):
    reduced = _case(two_rank_run[0], "mse_channel")
    # float64 sums of six batches in another order: a few ulps apart, never more
    torch.testing.assert_close(reduced["state.sse"], one_process["mse_channel.state.sse"],
                               rtol=1e-12, atol=0.0)
    for key in ("state.min_val", "state.max_val", "state.n_out", "lo", "hi"):
        assert torch.equal(reduced[key], one_process[f"mse_channel.{key}"]), key


def test_the_moving_average_reduces_like_merge(two_rank_run, merged_shards):
    reduced = _case(two_rank_run[0], "moving_average")
    for key in ("state.min_val", "state.max_val"):
        torch.testing.assert_close(reduced[key], merged_shards[f"moving_average.{key}"],
                                   rtol=1e-14, atol=0.0)
    for key in ("state.n_batches", "state.n_out", "state.n_seen"):
        assert torch.equal(reduced[key], merged_shards[f"moving_average.{key}"]), key


def test_ranks_listing_different_observers_all_get_a_state_error(two_rank_run):
    for records in two_rank_run[2:]:
        message = records["mismatch_error"]
        assert message.startswith("StateError: rank 1 calibrates other layers than rank 0")
        assert "same model with the same recipe" in message
