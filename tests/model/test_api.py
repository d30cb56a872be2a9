"""quantize_model (batch conventions, forward loops, generators, errors), PTQPipeline,
QuantizationConfig's four modes end to end, and role flags."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.compat import PTQPipeline
from lowbit.model.api import quantize_model
from lowbit.model.convert import convert
from lowbit.model.prepare import calibrate, lowbit_state, prepare, quant_modules
from lowbit.model.qat import qat_finetune
from lowbit.nn.qat import QuantLinear
from lowbit.nn.quantized import QuantizedLinear, QuantizedModule, set_kernel_path
from lowbit.compat import QC_MODES, QuantizationConfig, recipe_from_flags


class TwoInputs(nn.Module):
    """forward(x, y): x reaches fx and y reaches fy, given by position or by keyword."""

    def __init__(self):
        super().__init__()
        self.fx = nn.Linear(4, 4)
        self.fy = nn.Linear(4, 4)

    def forward(self, x, y):
        return self.fx(x) + self.fy(y)


class Reordered(nn.Module):
    """Registration order first, second, third; execution order third -> first -> second."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 4)
        self.third = nn.Linear(6, 8)

    def forward(self, x):
        return self.second(torch.relu(self.first(self.third(x))))


def n_observed(model) -> dict[str, int]:
    return {n: m.act_quantizer.summary()["n_observed"] for n, m in quant_modules(model)
            if m.act_quantizer is not None}


def xs(n: int, shape=(3, 4), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


@pytest.fixture
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


# ---------------------------------------------------------------------------- conventions


def test_quantize_model_returns_a_converted_copy_and_records(mlp):
    q, records = quantize_model(mlp, "w8a8-static", xs(3))
    assert type(mlp[0]) is nn.Linear, "the input model is left untouched"
    assert type(q[0]) is QuantizedLinear and type(q[2]) is QuantizedLinear
    assert [r.name for r in records] == ["0", "2"]
    assert all(r.action == "quantized" for r in records)
    assert records is lowbit_state(q).records


def test_convert_false_keeps_the_calibrated_fake_quant_model(mlp):
    fq, _ = quantize_model(mlp, "w8a8-static", xs(3), convert=False)
    assert type(fq[0]) is QuantLinear and lowbit_state(fq).calibrated
    x = xs(1, seed=5)[0]
    # kernel path 'auto' (the default) may round through bfloat16 kernels; 'reference' is
    # the exact fake-quant arithmetic this test holds to equality (tests/nn/test_kernel_dispatch.py
    # holds the kernels to their tolerance)
    assert torch.equal(set_kernel_path(convert(fq), "reference")(x), fq(x))


def test_tuple_dict_and_tensor_batches_follow_the_convention():
    torch.manual_seed(0)
    model = TwoInputs()
    a, b = xs(2, seed=1)
    # a tuple (or list) batch is positional, a dict is keyword arguments
    pos, _ = quantize_model(model, "w8a8-static", [(a, b)], convert=False)
    kw, _ = quantize_model(model, "w8a8-static", [{"x": a, "y": b}], convert=False)
    lst, _ = quantize_model(model, "w8a8-static", [[a, b]], convert=False)
    for fq in (pos, kw, lst):
        assert n_observed(fq) == {"fx": 1, "fy": 1}
        assert torch.equal(fq.fy.act_quantizer.scale, pos.fy.act_quantizer.scale), \
            "y reached fy whichever way the batch was given"
    single, _ = quantize_model(nn.Sequential(nn.Linear(4, 4)), "w8a8-static", [a, b],
                               convert=False)
    assert n_observed(single) == {"0": 2}, "a tensor batch is the single argument"


def test_a_forward_loop_runs_the_model_itself(mlp):
    data = xs(4)
    calls = []

    def forward_loop(model):
        calls.append(model)
        for x in data:
            model(x)

    fq, _ = quantize_model(mlp, "w8a8-static", forward_loop, convert=False)
    assert len(calls) == 1 and calls[0] is fq, "the loop gets the prepared model"
    assert set(n_observed(fq).values()) == {4}
    bounded, _ = quantize_model(mlp, "w8a8-static", forward_loop, max_batches=2, convert=False)
    assert set(n_observed(bounded).values()) == {2}, "max_batches bounds a loop's forwards too"


def test_a_single_pass_generator_is_used_whole_and_gives_the_roles():
    torch.manual_seed(0)
    model = Reordered().eval()
    data = xs(3, shape=(2, 6))
    gen = (x for x in data)
    fq, records = quantize_model(model, recipe_from_flags(q_head=True), gen, convert=False)
    assert [n for n, _ in quant_modules(fq)] == ["second"], \
        "the head is the last layer executed, found from the generator's first batch"
    assert n_observed(fq) == {"second": 3}, "the first batch is calibrated on too"
    assert lowbit_state(fq).roles.source == "execution"
    assert {r.name: r.action for r in records} == {"first": "float", "second": "quantized",
                                                    "third": "float"}


def test_q_head_quantizes_only_the_last_layer(mlp):
    q, _ = quantize_model(mlp, recipe_from_flags(q_head=True), xs(2))
    assert type(q[0]) is nn.Linear and type(q[2]) is QuantizedLinear


def test_max_batches_bounds_an_iterable(mlp):
    seen = []
    fq, _ = quantize_model(mlp, "w8a8-static", xs(5), max_batches=2, convert=False,
                           progress=seen.append)
    assert set(n_observed(fq).values()) == {2} and seen == [1, 2]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_batches_is_validated(mlp, bad):
    with pytest.raises(ConfigError, match="max_batches.*None or an integer >= 1"):
        quantize_model(mlp, "w8a8-static", xs(2), max_batches=bad)


@pytest.mark.parametrize("empty", [[], (), iter([]), (x for x in [])])
@pytest.mark.parametrize("recipe", ["w8a8-static", "w8a16"])
def test_empty_calibration_data_is_a_config_error(mlp, empty, recipe):
    with pytest.raises(ConfigError, match="calib_data.*empty.*at least one batch"):
        quantize_model(mlp, recipe, empty)


def test_calibration_data_of_the_wrong_kind(mlp):
    with pytest.raises(ConfigError, match="calib_data.*an iterable of batches"):
        quantize_model(mlp, "w8a8-static", 3)
    with pytest.raises(ConfigError, match="calib_data.*single tensor"):
        quantize_model(mlp, "w8a8-static", torch.randn(5, 4))


def test_fused_equals_reference_for_int8_presets(mlp):
    data, probe = xs(3), xs(1, seed=9)[0]
    for preset in ("w8a8", "w8a8-static", "w8a16"):
        ref, _ = quantize_model(mlp, preset, data)
        nat, rec = quantize_model(mlp, preset, data, fq_impl="fused")
        # records carry the kernel chosen at convert (kernel_path/kernel/kernel_reason) and
        # the fake-quant fq_impl of the prepared model
        assert all(r.kernel for r in rec)
        assert torch.equal(ref(probe), nat(probe)), preset


# ---------------------------------------------------------------------------- PTQPipeline


def loader(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, 4, generator=g), torch.randint(0, 2, (3,), generator=g))
            for _ in range(n)]


def test_pipeline_calibrates_on_x_of_x_y_batches_and_converts(mlp):
    pipe = PTQPipeline(mlp, "w8a8-static")
    fq = pipe.calibrate(loader(6), num_batches=4)
    assert set(n_observed(fq).values()) == {4}, "num_batches bounds the batches observed"
    q = pipe.convert()
    # kernel path 'auto' (the default) may round through bfloat16 kernels; 'reference' is
    # the exact fake-quant arithmetic this test holds to equality (tests/nn/test_kernel_dispatch.py
    # holds the kernels to their tolerance)
    set_kernel_path(q, "reference")
    assert isinstance(q[0], QuantizedModule) and type(pipe.model[0]) is QuantLinear
    assert [r.name for r in pipe.records] == ["0", "2"]
    x = loader(1, seed=3)[0][0]
    assert torch.equal(q(x), fq(x))


def test_pipeline_size_and_evaluate(mlp):
    pipe = PTQPipeline(mlp)
    pipe.calibrate(loader(2))
    float_bytes, q_bytes = pipe.get_model_size()
    assert float_bytes == sum(p.numel() * 4 for p in mlp.parameters())
    assert q_bytes < float_bytes
    x = loader(1, seed=4)[0][0]
    result = pipe.evaluate(lambda m: m(x))
    assert torch.equal(result["float"], mlp(x))
    assert torch.equal(result["quantized"], pipe.quantized_model(x))
    assert not torch.equal(result["float"], result["quantized"])


def test_pipeline_recalibration_drops_the_old_conversion(mlp):
    pipe = PTQPipeline(mlp)
    pipe.calibrate(loader(2))
    first = pipe.convert()
    pipe.calibrate(loader(2, seed=7))
    x = loader(1, seed=4)[0][0]
    assert pipe.evaluate(lambda m: m(x))["quantized"] is not None
    assert pipe.quantized_model is not first, "a new calibration is converted anew"


def test_pipeline_errors(mlp):
    pipe = PTQPipeline(mlp)
    with pytest.raises(ConfigError, match="calibrate\\(\\) before convert\\(\\)"):
        pipe.convert()
    with pytest.raises(ConfigError, match="loader.*empty"):
        pipe.calibrate([])
    with pytest.raises(ConfigError, match="num_batches"):
        pipe.calibrate(loader(2), num_batches=0)
    assert pipe.records == []


# ---------------------------------------------------------------------------- QuantizationConfig


def test_quantization_config_modes_run_end_to_end():
    """ptq_* calibrate and convert; qat_* also fine-tune in between (weights K = 128 so the
    int4 modes' groups of 128 apply)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4)).eval()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(8, 128, generator=g) for _ in range(2)]
    train = [(x, torch.randint(0, 4, (8,), generator=g)) for x in data]
    probe = torch.randn(4, 128, generator=g)
    assert set(QC_MODES) == {"ptq_int8", "qat_int8", "ptq_int4", "qat_int4"}
    for mode in QC_MODES:
        config = QuantizationConfig(mode=mode)
        fq, records = quantize_model(model, config.to_recipe(), data, convert=False)
        assert [r.action for r in records] == ["quantized", "quantized"], mode
        if config.qat:
            before = fq[0].weight.detach().clone()
            qat_finetune(fq, train, nn.CrossEntropyLoss(), epochs=1, lr=1e-3)
            assert not torch.equal(before, fq[0].weight), f"{mode}: QAT trains the weights"
        q = convert(fq)
        # kernel path 'auto' (the default) may round through bfloat16 kernels; 'reference' is
        # the exact fake-quant arithmetic this test holds to equality (tests/nn/test_kernel_dispatch.py
        # holds the kernels to their tolerance)
        set_kernel_path(q, "reference")
        assert q[0].qtype.bits == config.bits
        assert q[0].packed == (config.bits == 4), mode
        with torch.no_grad():
            assert torch.equal(q(probe), fq(probe)), mode
        if not config.qat:  # (QAT moved the weights away from the float model's)
            with torch.no_grad():
                err = (q(probe) - model(probe)).abs().max() / model(probe).abs().max()
            # about 3x the typical relative error of int8 / int4 rounding on this toy model
            assert err < (0.03 if config.bits == 8 else 0.2), f"{mode}: relative error {err}"


def test_quantize_model_does_not_touch_a_deep_copy_teacher(mlp):
    teacher = copy.deepcopy(mlp)
    quantize_model(mlp, "w8a8", xs(2))
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), mlp.parameters()))


def _bn_dropout_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(32, 8))
    with torch.no_grad():  # trained-looking statistics, far from the calibration batches'
        net[1].running_mean.uniform_(-2, 2)
        net[1].running_var.uniform_(0.5, 4)
    return net


def test_a_model_in_train_mode_is_calibrated_in_eval_mode_and_left_untouched():
    """BatchNorm statistics changed in the copy, dropout stayed on and the result came back
    in train mode (relative output error ~0.4 instead of ~0.03)."""
    net = _bn_dropout_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    calib = [torch.randn(16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    with pytest.warns(UserWarning, match="in train mode; lowbit calibrates in eval mode"):
        qmodel, _ = quantize_model(net, "w8a8-static", calib)
    assert net.training, "the float model keeps its mode"
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), \
        "the float model's tensors (BatchNorm statistics included) are unchanged"
    assert not qmodel.training
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(9))
    net.eval()
    with torch.no_grad():
        ref, out = net(x), qmodel(x)
    assert float((out - ref).norm() / ref.norm()) < 0.1


def test_start_calibration_also_switches_a_train_mode_model_to_eval():
    fq = prepare(_bn_dropout_net(), "w8a8-static").train()
    with pytest.warns(UserWarning, match="lowbit calibrates in eval mode"):
        fq.start_calibration()
    assert not fq.training
    with torch.no_grad():
        fq(torch.randn(8, 16))
    fq.end_calibration()
    assert not fq.training
