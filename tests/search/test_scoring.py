"""The scorer: cosine to float by default, eval_fn otherwise; loss is 0 for float."""

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError, InputError
from lowbit.search.scoring import Scorer, as_batches, first_tensor


def test_default_metric_is_row_cosine_to_float():
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    batches = [torch.randn(5, 8), torch.randn(3, 8)]
    scorer = Scorer(model, batches)
    assert scorer.name == "cosine_to_float"
    assert scorer.loss(model) == pytest.approx(0.0, abs=1e-6)
    other = nn.Linear(8, 4)
    out = torch.cat([other(b) for b in batches]).detach()
    ref = torch.cat([model(b) for b in batches]).detach()
    expected = float(torch.nn.functional.cosine_similarity(out, ref, dim=1).mean())
    assert scorer.metric(other) == pytest.approx(expected, rel=1e-6)
    assert scorer.loss(other) == pytest.approx(scorer.float_metric - expected, rel=1e-5)


def test_eval_fn_and_lower_is_better():
    model = nn.Linear(2, 2)
    scorer = Scorer(model, [torch.zeros(1, 2)], eval_fn=lambda m: 3.0, higher_is_better=False,
                    metric_name="perplexity")
    assert scorer.name == "perplexity" and scorer.float_metric == 3.0
    assert scorer.loss_of(5.0) == 2.0 and scorer.loss_of(1.0) == -2.0


def test_first_tensor_and_batches_checks():
    t = torch.ones(2)
    assert first_tensor((t, 1)) is t and first_tensor({"a": t}) is t
    with pytest.raises(InputError, match="no floating tensor"):
        first_tensor((1, 2))
    assert len(as_batches(iter([t, t, t]), max_batches=2)) == 2
    with pytest.raises(ConfigError, match="at least one batch"):
        as_batches([])
    with pytest.raises(ConfigError, match="iterable of batches"):
        as_batches(torch.ones(3))
    with pytest.raises(ConfigError, match="eval_fn"):
        Scorer(nn.Linear(2, 2), [torch.zeros(1, 2)], eval_fn=3)
