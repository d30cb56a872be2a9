"""lowbit.model.batches: one convention for feeding a batch to a model, peek, run_batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.model.batches import (call_batch, check_calib_data, check_max_batches,
                                  is_forward_loop, peek, run_batches, split_batch)


class Recorder(nn.Module):
    """Remembers the positional and keyword arguments of every call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[tuple, dict]] = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return len(self.calls)


def test_split_batch_tuple_list_dict_and_single():
    x, y = torch.zeros(1), torch.ones(1)
    assert split_batch((x, y)) == ((x, y), {}), "a tuple is positional arguments"
    args, kwargs = split_batch([x, y])
    assert args == (x, y) and isinstance(args, tuple) and kwargs == {}, "a list too"
    assert split_batch({"a": x}) == ((), {"a": x}), "a dict is keyword arguments"
    assert split_batch(x) == ((x,), {}), "anything else is the single argument"


def test_call_batch_passes_arguments_by_the_convention():
    model = Recorder()
    x, y = torch.zeros(2), torch.ones(2)
    call_batch(model, (x, y))
    call_batch(model, {"input_ids": x, "attention_mask": y})
    call_batch(model, x)
    (a1, k1), (a2, k2), (a3, k3) = model.calls
    assert a1 == (x, y) and k1 == {}
    assert a2 == () and k2 == {"input_ids": x, "attention_mask": y}
    assert a3 == (x,) and k3 == {}


def test_peek_keeps_the_first_batch_of_a_generator():
    batches = [torch.full((1,), float(i)) for i in range(3)]
    first, data = peek(b for b in batches)
    assert torch.equal(first, batches[0])
    again = list(data)
    assert len(again) == 3 and all(torch.equal(a, b) for a, b in zip(again, batches)), \
        "the data returned by peek must still yield the first batch"


def test_peek_on_lists_empty_data_and_forward_loops():
    batches = [torch.zeros(1), torch.ones(1)]
    first, data = peek(batches)
    assert first is batches[0] and data is batches, "a list is returned as it is"
    assert peek([]) == (None, [])
    first, data = peek(iter([]))
    assert first is None and list(data) == []

    def loop(model):
        return None

    assert peek(loop) == (None, loop), "a forward loop is returned unchanged"
    assert is_forward_loop(loop) and not is_forward_loop(Recorder()), \
        "a module is callable but is not a forward loop"


def test_run_batches_counts_limits_and_reports_progress():
    model, seen = Recorder(), []
    n = run_batches(model, [torch.zeros(1)] * 5, max_batches=3, progress=seen.append)
    assert n == 3 and len(model.calls) == 3, "max_batches bounds the batches run"
    assert seen == [1, 2, 3], "progress gets the running count after every batch"
    assert run_batches(Recorder(), (torch.zeros(1) for _ in range(4))) == 4
    assert run_batches(Recorder(), [torch.zeros(1)], max_batches=0) == 0


def test_run_batches_with_a_forward_loop():
    model = Recorder()
    n = run_batches(model, lambda m: [m(torch.zeros(1)) for _ in range(2)])
    assert n == -1, "a forward loop counts its own batches"
    assert len(model.calls) == 2


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_run_batches_rejects_bad_max_batches(bad):
    with pytest.raises(ConfigError, match="max_batches"):
        run_batches(Recorder(), [torch.zeros(1)], max_batches=bad)


@pytest.mark.parametrize("bad", [0, -2, 2.0, False])
def test_check_max_batches_wants_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="num_batches.*None or an integer >= 1"):
        check_max_batches(bad, "num_batches")
    check_max_batches(None)
    check_max_batches(1)


def test_non_iterable_data_is_rejected():
    with pytest.raises(ConfigError, match="calib_data.*an iterable of batches"):
        run_batches(Recorder(), 5)
    with pytest.raises(ConfigError, match="calib_data.*int"):
        check_calib_data(7)


@pytest.mark.parametrize("one_batch", [torch.zeros(4, 3), {"input_ids": torch.zeros(2, 3)}])
def test_a_single_tensor_or_dict_is_one_batch_not_a_list_of_batches(one_batch):
    """Iterating a tensor would feed its rows (and a dict its keys) to the model."""
    with pytest.raises(ConfigError, match=r"calib_data.*single.*wrap the batch in a list"):
        run_batches(Recorder(), one_batch)
    with pytest.raises(ConfigError, match="calib_data"):
        peek(one_batch)
