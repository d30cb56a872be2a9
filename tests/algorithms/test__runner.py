"""The shared block runner: finding blocks, capturing inputs, sequential vs float replay."""

import pytest
import torch
from torch import nn

from lowbit.algorithms._runner import capture_block_inputs, find_blocks, run_blocks
from lowbit.errors import ConfigError

from .toy import Toy, batches

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: one thread is faster


def _float_block_inputs(model, data):
    """What each block receives in the float model: (hidden, mask) per block per batch."""
    seen = {i: [] for i in range(len(model.layers))}
    hooks = [layer.register_forward_pre_hook(
        lambda m, a, k, i=i: seen[i].append((a[0].clone(), k["mask"])), with_kwargs=True)
        for i, layer in enumerate(model.layers)]
    with torch.no_grad():
        for x, mask in data:
            model(x, mask=mask)
    for h in hooks:
        h.remove()
    return seen


def test_find_blocks_takes_the_longest_run_of_one_class():
    model = Toy(depth=3)
    model.extra = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    assert [n for n, _ in find_blocks(model)] == ["layers.0", "layers.1", "layers.2"]
    assert [n for n, _ in find_blocks(model, "extra")] == ["extra.0", "extra.1"]


def test_find_blocks_rejects_a_model_without_blocks_or_a_bad_name():
    with pytest.raises(ConfigError, match="repeated blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="blocks='nope'"):
        find_blocks(Toy(), "nope")


def test_each_block_gets_exactly_the_float_models_inputs_when_nothing_changes():
    model, data = Toy(), batches()
    expected = _float_block_inputs(model, data)
    got = {}

    def step(ctx):
        got[ctx.index] = [(ctx.inputs.hidden(i).clone(), ctx.inputs.kwargs[i]["mask"])
                          for i in range(len(ctx.inputs))]

    assert run_blocks(model, data, step) == 3
    for i in range(3):
        assert len(got[i]) == len(expected[i]) == 3
        for (h, m), (h_ref, m_ref) in zip(got[i], expected[i]):
            assert torch.equal(h, h_ref) and torch.equal(m, m_ref)


def _zero_up(ctx):
    with torch.no_grad():
        ctx.module.up.weight.zero_()


def test_sequential_feeds_changed_outputs_and_float_mode_the_float_ones():
    data = batches(1)
    expected = _float_block_inputs(Toy(), data)
    for sequential in (True, False):
        model, got = Toy(), {}

        def step(ctx):
            got[ctx.index] = ctx.inputs.hidden(0).clone()
            _zero_up(ctx)

        run_blocks(model, data, step, sequential=sequential)
        assert torch.equal(got[0], expected[0][0][0])
        # the float model's input to block 1 differs from the zeroed block 0's output
        assert torch.equal(got[1], expected[1][0][0]) is (not sequential)


def test_capture_keeps_kwargs_turns_caches_off_and_can_store_bfloat16():
    model, data = Toy(), batches(2)
    cap = capture_block_inputs(model, model.layers[0], data, max_batches=1,
                               act_dtype=torch.bfloat16)
    assert len(cap) == 1 and cap.hidden(0).dtype == torch.bfloat16
    assert cap.kwargs[0]["use_cache"] is False and cap.kwargs[0]["past_key_values"] is None
    outs = []
    run_blocks(model, data, lambda ctx: outs.append(ctx.run()[0].dtype), act_dtype=torch.bfloat16)
    assert outs == [torch.float32] * 3  # the block itself runs in its own dtype


def test_capture_rejects_a_forward_loop_and_empty_data():
    model = Toy()
    with pytest.raises(ConfigError, match="forward loop"):
        capture_block_inputs(model, model.layers[0], lambda m: None)
    with pytest.raises(ConfigError, match="at least one batch"):
        capture_block_inputs(model, model.layers[0], [])


def test_progress_callable_counts_blocks():
    counts = []
    run_blocks(Toy(), batches(1), lambda ctx: None, progress=counts.append)
    assert counts == [1, 2, 3]


class _Cnn(nn.Module):
    """No repeated blocks; the head is defined before the convs but called last."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(4 * 16, 3)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def test_a_model_without_blocks_runs_layer_by_layer_in_call_order():
    model, data = _Cnn(), [torch.randn(2, 1, 4, 4) for _ in range(2)]
    seen = []

    def step(ctx):
        seen.append((ctx.name, [n for n, _ in ctx.layers((nn.Conv2d, nn.Linear))],
                     len(ctx.inputs)))
    assert run_blocks(model, data, step) == 3
    assert seen == [("conv1", [""], 2), ("conv2", [""], 2), ("head", [""], 2)]
    from lowbit.algorithms import find_layers
    assert [n for n, _ in find_layers(model, data)] == ["conv1", "conv2", "head"]


@pytest.mark.parametrize("sequential", [True, False])
def test_layer_mode_inputs_see_earlier_steps_only_when_sequential(sequential):
    model, data = _Cnn(), [torch.randn(2, 1, 4, 4) for _ in range(2)]
    with torch.no_grad():
        float_in = torch.relu(model.conv1(data[0]))
    got, refs, names = {}, {}, []

    def step(ctx):
        got[ctx.name] = ctx.inputs.hidden(0).clone()
        refs[ctx.name] = ctx.reference_inputs.hidden(0).clone()
        names.append(ctx.record(""))
        with torch.no_grad():
            ctx.module.weight.zero_()
            ctx.module.bias.zero_()

    import contextlib
    run_blocks(model, data, step, blocks="layers", sequential=sequential,
               reference=contextlib.nullcontext, record=lambda n: n)
    assert names == ["conv1", "conv2", "head"]
    assert torch.equal(refs["conv2"], float_in)  # the model before any step
    assert torch.equal(got["conv2"], torch.zeros_like(float_in) if sequential else float_in)


def test_block_mode_reference_inputs_are_the_unchanged_models():
    model, data = Toy(), batches()
    expected = _float_block_inputs(model, data)
    refs = {}

    def step(ctx):
        refs[ctx.index] = ctx.reference_inputs.hidden(0).clone()
        _zero_up(ctx)

    import contextlib
    run_blocks(model, data, step, reference=contextlib.nullcontext)
    for i in range(3):
        assert torch.equal(refs[i], expected[i][0][0])
