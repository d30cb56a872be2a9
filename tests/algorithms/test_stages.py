"""Algorithm stages in quantize_model: float-stage (bn_fold, cle) before prepare, quantized-
stage (bias_correction, bn_*) after calibration; records list every step; same bytes twice."""

import torch

import lowbit
from lowbit.algorithms import ALGORITHMS
from lowbit.algorithms.base import STAGES
from lowbit.model.prepare import lowbit_state

from .test_bn_reconstruct import W4_PER_CHANNEL, W8_PER_TENSOR, held_out_mse
from .toy_cnn import ToyCNN, images

STEPS = ["bn_fold", "cle", "bias_correction", "bn_affine"]


def test_every_registered_algorithm_has_a_known_stage():
    assert all(cls.stage in STAGES for cls in ALGORITHMS.values())
    assert {n: ALGORITHMS[n].stage for n in STEPS} == {
        "bn_fold": "float", "cle": "float", "bias_correction": "quantized",
        "bn_affine": "quantized"}


def test_records_list_every_step_and_the_caller_model_is_untouched():
    model, calib = ToyCNN(), images(4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel, records = lowbit.quantize_model(model, W4_PER_CHANNEL, calib, algorithms=STEPS,
                                            convert=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert isinstance(model.bn, torch.nn.BatchNorm2d)
    by_name = {r.name: r for r in records}
    conv = by_name["conv"]
    assert conv.metrics["bn_fold"] == "bn" and conv.metrics["cle_with"] == "dw"
    assert conv.metrics["bias_correction"] == "weight" and "bn_affine_a_min" in conv.metrics
    assert "weights by bn_fold+cle+bias_correction+bn_affine" in conv.reason
    head = by_name["head"]
    assert "bn_fold" not in head.metrics and head.metrics["cle_with_input"] == "fc"
    assert lowbit_state(qmodel).algorithms[0] == {"name": "bn_fold",
                                                  "tol": 1e-5}


def test_order_is_by_stage_and_the_result_is_reproducible_byte_for_byte():
    model, calib = ToyCNN(), images(4)
    a, _ = lowbit.quantize_model(model, W4_PER_CHANNEL, calib,
                                 algorithms=["bias_correction", "cle", "bn_fold"], seed=3)
    b, _ = lowbit.quantize_model(model, W4_PER_CHANNEL, calib,
                                 algorithms=["bias_correction", "cle", "bn_fold"], seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_cle_and_the_composed_recipe_beat_plain_rounding_on_held_out_inputs():
    model, calib, held_out = ToyCNN(), images(6), images(4, seed=9)
    plain, _ = lowbit.quantize_model(model, W8_PER_TENSOR, calib, algorithms=["bn_fold"],
                                     convert=False)
    cle, _ = lowbit.quantize_model(model, W8_PER_TENSOR, calib, algorithms=["bn_fold", "cle"],
                                   convert=False)
    assert held_out_mse(model, cle, held_out) < held_out_mse(model, plain, held_out)
    fixed, _ = lowbit.quantize_model(model, W8_PER_TENSOR, calib,
                                     algorithms=["bn_fold", "cle", "bias_correction"],
                                     convert=False)
    assert held_out_mse(model, fixed, held_out) < held_out_mse(model, plain, held_out)
