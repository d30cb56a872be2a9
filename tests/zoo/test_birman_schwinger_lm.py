"""lowbit.zoo.birman_schwinger_lm: text, windows, the causal LM, training, the trained fixture.

Property tests use a tiny untrained model; the quality tests load the committed float weights
(tests/fixtures/bs_lm, made by benchmarks/train_bs_lm.py) instead of training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError, InputError
from lowbit.nn import QuantComplexPoint, QuantizedLinear
from lowbit.zoo.birman_schwinger_lm import (VOCAB_SIZE, BirmanSchwingerLM, decode_ids,
                                            encode_text, lm_windows, load_lm, perplexity,
                                            pydoc_text, text_splits, train_lm)
from lowbit.zoo.birman_schwinger_quant import birman_schwinger_recipe

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bs_lm"
TINY = dict(n_seq=16, d_model=16, n_layers=1, n_heads=4, d_ff=32)


def _tiny(seed=0):
    return BirmanSchwingerLM(**TINY, seed=seed)


def _ids(n=400, seed=0):
    return torch.randint(1, VOCAB_SIZE, (n,), generator=torch.Generator().manual_seed(seed))


def test_text_codes_round_trip_and_unknown_characters():
    ids = encode_text("def f():\n\treturn π")
    assert ids.dtype == torch.int64
    assert decode_ids(ids) == "def f():\n?return ?"  # tab and π are outside the vocabulary
    assert int(ids.max()) < VOCAB_SIZE and int(ids.min()) == 0
    with pytest.raises(InputError, match="takes a str"):
        encode_text(b"bytes")


def test_text_splits_hold_out_the_tail():
    train, test = text_splits(0.1)
    full = encode_text(pydoc_text())
    assert torch.equal(torch.cat([train, test]), full)
    assert len(test) == len(full) - int(len(full) * 0.9)
    with pytest.raises(ConfigError, match="held_out"):
        text_splits(1.5)


def test_windows_shift_targets_by_one():
    ids = torch.arange(100)
    batches = lm_windows(ids, 8, batch=4)
    inputs, targets = batches[0]
    assert inputs.shape == (4, 8) and torch.equal(targets, inputs + 1)
    assert torch.equal(inputs[1], torch.arange(8, 16))  # consecutive, non-overlapping
    assert sum(len(b[0]) for b in batches) == (100 - 9) // 8 + 1
    random = lm_windows(ids, 8, batch=3, n_batches=5, seed=1)
    assert len(random) == 5 and torch.equal(random[2][1], random[2][0] + 1)
    assert torch.equal(random[0][0], lm_windows(ids, 8, batch=3, n_batches=5, seed=1)[0][0])
    with pytest.raises(InputError, match="fewer than"):
        lm_windows(torch.arange(5), 8, batch=1)
    with pytest.raises(ConfigError, match="n_batches"):
        lm_windows(ids, 8, batch=1, seed=0)


def test_model_is_causal_before_and_after_quantization():
    model = _tiny().eval()
    ids = _ids(32).reshape(2, 16)
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % VOCAB_SIZE
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 16, VOCAB_SIZE)
    assert torch.equal(a[:, :10], b[:, :10]) and not torch.equal(a[:, 10:], b[:, 10:])
    recipe = birman_schwinger_recipe("ptq_int4", group_size=8, causal=True)
    qmodel = lowbit.prepare(model, recipe)
    with lowbit.calibrate(qmodel):
        qmodel(ids)
    qmodel = lowbit.convert(qmodel)
    assert isinstance(qmodel.blocks[0].core.g_point, QuantComplexPoint)
    with torch.no_grad():
        qa, qb = qmodel(ids), qmodel(changed)
    assert torch.equal(qa[:, :10], qb[:, :10])


def test_same_seed_same_model_and_input_checks():
    assert all(torch.equal(x, y) for x, y in zip(_tiny(3).state_dict().values(),
                                                 _tiny(3).state_dict().values()))
    with pytest.raises(InputError, match=r"shape \(B, 16\)"):
        _tiny()(torch.zeros(2, 15, dtype=torch.int64))
    with pytest.raises(ConfigError, match="n_layers"):
        BirmanSchwingerLM(n_layers=0)


def test_training_lowers_the_loss_and_keeps_the_cores_causal():
    model = _tiny()
    ids = torch.arange(1, 401) % 7 + 1  # a periodic text: easy to learn
    batches = lm_windows(ids, 16, batch=8, n_batches=60, seed=0)
    before = perplexity(model, batches[:4])
    losses = train_lm(model, batches, lr=1e-2, warmup=5)
    assert len(losses) == 60 and perplexity(model, batches[:4]) < before / 2
    core = model.blocks[0].core
    assert torch.count_nonzero(torch.triu(core.proj.weight, 1)) == 0
    assert torch.count_nonzero(torch.triu(core.out.weight, 1)) == 0
    with pytest.raises(ConfigError, match="trainable"):
        train_lm(_tiny().requires_grad_(False), batches[:1])


def test_qat_training_runs_through_fake_quant():
    model = _tiny()
    batches = lm_windows(_ids(), 16, batch=4, n_batches=4, seed=0)
    qmodel = lowbit.prepare(model, birman_schwinger_recipe("qat_int8", causal=True))
    with lowbit.calibrate(qmodel):
        qmodel(batches[0][0])
    before = qmodel.blocks[0].core.proj.weight.detach().clone()
    train_lm(qmodel, batches, lr=1e-3, warmup=1)
    after = qmodel.blocks[0].core.proj.weight.detach()
    assert not torch.equal(before, after)
    assert torch.count_nonzero(torch.triu(after, 1)) == 0


def test_load_lm_reports_a_missing_directory(tmp_path):
    with pytest.raises(InputError, match="train_bs_lm.py"):
        load_lm(tmp_path / "nothing")


@pytest.fixture(scope="module")
def trained():
    if not (FIXTURE / "weights.safetensors").exists():
        pytest.skip("tests/fixtures/bs_lm is missing; run benchmarks/train_bs_lm.py")
    return load_lm(FIXTURE)


def _held_out(n_batches=2):
    _, test = text_splits()
    return lm_windows(test, 128, batch=16, n_batches=n_batches)


def test_trained_fixture_beats_uniform_by_far(trained):
    assert perplexity(trained, _held_out()) < VOCAB_SIZE / 4


def test_trained_lm_int8_ptq_saves_and_loads(trained, tmp_path):
    train, _ = text_splits()
    qmodel = lowbit.prepare(trained, birman_schwinger_recipe("ptq_int8", causal=True))
    with lowbit.calibrate(qmodel):
        for inputs, _ in lm_windows(train, 128, batch=8, n_batches=2, seed=1):
            qmodel(inputs)
    qmodel = lowbit.convert(qmodel, inplace=True)
    assert isinstance(qmodel.blocks[1].fc2, QuantizedLinear)
    held_out = _held_out(1)
    lowbit.save(qmodel, tmp_path / "lm")
    loaded = lowbit.load(tmp_path / "lm", load_lm(FIXTURE))
    with torch.no_grad():
        assert torch.equal(loaded(held_out[0][0]), qmodel(held_out[0][0]))
    assert lowbit.estimate_model_size(loaded)["compression_ratio"] > 1.5
