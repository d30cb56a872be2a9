"""Layer-wise algorithms across 2 gloo ranks (spawned once per session, conftest.two_rank_run).

Every rank must end with bit-identical weights, qparams and records (each layer is
quantized by one owner rank and broadcast).  Against one process on all batches: GPTQ is
bit-exact when the Hessian sums are exact whatever their order (a model with dyadic weights
and inputs, float64 Hessians, float outputs fed forward); otherwise the reordered sums move
some scales by a few ulps, which may flip a rare code by one grid step.
"""

from __future__ import annotations

import pytest
import torch

import dist_cases
from lowbit.runtime import one_thread


def _model(tensors: dict, name: str) -> dict:
    prefix = f"model.{name}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def one_process():
    """Every model case quantized in one process on all batches (one thread, as each rank:
    the same kernels, so only the order of the sums across ranks differs)."""
    with one_thread():
        return {name: dist_cases.quantize_case(name, 0, 1) for name in dist_cases.MODEL_CASES}


@pytest.mark.parametrize("name", list(dist_cases.MODEL_CASES))
def test_both_ranks_end_with_identical_models_and_records(two_rank_run, name):
    rank0, rank1 = _model(two_rank_run[0], name), _model(two_rank_run[1], name)
    assert rank0 and rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert two_rank_run[2][name] == two_rank_run[3][name]  # metrics come from the owner


@pytest.mark.parametrize("name", ["gptq_exact", "calibrate_entropy"])
def test_two_ranks_are_bit_exact_with_one_process_when_the_sums_are_exact(
        two_rank_run, one_process, name):
    reduced = _model(two_rank_run[0], name)
    state, records = one_process[name]
    assert reduced.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(reduced[key], value), key
    metrics = {r["name"]: r["metrics"] for r in two_rank_run[2][name]}
    for record in records:
        for key, value in record.metrics.items():
            # error metrics are float64 matmuls, whose last bits may follow buffer alignment
            if not key.endswith("seconds"):
                assert metrics[record.name][key] == pytest.approx(value, rel=1e-9), key


@pytest.mark.parametrize("name", ["gptq_sequential", "smoothquant_awq_gptq"])
def test_two_ranks_match_one_process_up_to_reordered_sums(two_rank_run, one_process, name):
    reduced = _model(two_rank_run[0], name)
    state, _ = one_process[name]
    for key, value in state.items():
        got = reduced[key]
        if not value.is_floating_point():
            assert torch.equal(got, value), key
            continue
        off = (got - value).abs() > 1e-5 * value.abs() + 1e-7
        # a flipped code moves one weight by one grid step; at most a handful per layer
        assert int(off.sum()) <= max(2, value.numel() // 500), (key, int(off.sum()))
        if key.endswith(".weight") and f"{key}_quantizer.scale" in state:
            step = float(state[f"{key}_quantizer.scale"].max())
            assert float((got - value).abs().max()) <= 1.001 * step, key


def test_gptq_improves_on_rounding_with_two_ranks_too(two_rank_run):
    """The shared records hold each layer's GPTQ output error next to plain rounding's."""
    for record in two_rank_run[2]["gptq_sequential"]:
        m = record["metrics"]
        if "gptq_output_mse" in m:
            assert m["gptq_output_mse"] <= m["rtn_output_mse"], record["name"]


def test_an_error_on_one_rank_is_raised_on_every_rank(two_rank_run):
    """Rank 1 fails on the layer it owns: it raises its own error, rank 0 a StateError
    naming rank 1 (instead of waiting forever for rank 1's broadcast)."""
    assert two_rank_run[3]["run_owned_error"] == "ValueError: layer 1 failed on purpose"
    message = two_rank_run[2]["run_owned_error"]
    assert message.startswith("StateError: rank 1 failed") and "on purpose" in message


def test_alone_every_layer_is_done_in_order_and_errors_pass_through():
    from lowbit.distributed import run_owned

    done = []
    run_owned([torch.nn.Linear(1, 1)] * 3, done.append, [None] * 3)
    assert done == [0, 1, 2]

    def fail(i):
        raise ValueError(f"layer {i}")

    with pytest.raises(ValueError, match="layer 0"):
        run_owned([torch.nn.Linear(1, 1)] * 2, fail, [None] * 2)
