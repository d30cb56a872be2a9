"""auto: keeps the best candidate per tensor and says why."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.observers import make_observer
from lowbit.observers.auto import CANDIDATES

SINGLE = ("minmax", "percentile:99.99", "mse", "entropy")


@pytest.mark.parametrize("fixture", ["gauss_int8", "laplace_int8", "relu_uint8", "gauss_int4"])
def test_within_a_tenth_of_a_db_of_the_best_method(quality_table, fixture):
    row = quality_table[fixture]
    best = max(row[m] for m in SINGLE)
    assert row["auto"] >= best - 0.1, f"auto {row['auto']:.3f} dB vs best {best:.3f} dB"


def _fed(method: str, x: torch.Tensor, **kw):
    obs = make_observer(QuantSpec(method=method, **kw))
    for batch in x.chunk(3):
        obs.update(batch)
    return obs


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
def test_summary_records_choice_scores_and_reason(scheme):
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((60_000,)) + 0.25
    obs = _fed("auto", x, scheme=scheme)
    s = json.loads(json.dumps(obs.summary()))
    assert set(s["scores"]) == set(CANDIDATES)
    assert s["chosen"] == min(s["scores"], key=s["scores"].get), "lowest score wins"
    assert s["chosen"] in s["reason"] and "lowest estimated quantization MSE" in s["reason"]
    assert [s["lo"], s["hi"]] == pytest.approx(s["candidates"][s["chosen"]], rel=1e-6)


def test_candidates_equal_the_single_observers():
    """auto shares one histogram; each candidate range must equal the observer's own."""
    torch.manual_seed(1)
    x = torch.randn(40_000) * 2
    auto = _fed("auto", x)
    auto.qparams()
    for name in CANDIDATES:
        single = _fed(name, x)
        lo, hi = single.clip_range()
        assert auto.ranges[name][1] == pytest.approx(float(hi), rel=1e-6), name


def test_merge_equals_one_stream():
    torch.manual_seed(2)
    xs = [torch.randn(5000) * (i + 1) for i in range(4)]
    one, a, b = (make_observer(QuantSpec(method="auto")) for _ in range(3))
    for x in xs:
        one.update(x)
    for x in xs[:3]:
        a.update(x)
    b.update(xs[3])
    a.merge(b)
    assert a.summary() == one.summary()
