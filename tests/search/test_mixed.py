"""search(): the choice is the exact optimum of its own table within the budget, the recipe
gives each layer its assigned format, and the measured size is what the table predicts."""

import itertools

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.model.select import select_layers
from lowbit.search.mixed import search

CANDS = ["w4a16-g128", "w8a16"]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def batches():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(16, 256, generator=gen) for _ in range(2)]


def brute_force(table, budget):
    heads = list(table)
    best = None
    for choice in itertools.product(*(list(table[h]) for h in heads)):
        cost = sum(table[h][c]["bytes"] for h, c in zip(heads, choice))
        loss = sum(table[h][c]["loss"] for h, c in zip(heads, choice))
        if cost <= budget and (best is None or loss < best):
            best = loss
    return best


@pytest.mark.parametrize("budget", ["0.2x", "0.25x", "0.3x"])
def test_choice_is_the_exact_optimum_and_respects_the_budget(batches, budget):
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = search(model, CANDS, budget, batches, max_units=10**6)  # 1-byte resolution
    assert res.resolution_bytes == 1.0
    assert res.cost_bytes <= res.budget_bytes
    assert res.predicted_loss == pytest.approx(brute_force(res.table, res.budget_bytes))
    # the recipe gives every layer its assigned candidate's config
    configs, _ = select_layers(model, res.recipe)
    for layer, cand in res.assignment.items():
        expected = lowbit.preset(cand).match(layer, model.get_submodule(layer))[1]
        assert configs[layer] == expected
    # weight-only candidates: the converted model stores exactly the predicted bytes
    assert res.model_bytes == res.model_float_bytes - res.float_layer_bytes + res.cost_bytes
    assert res.predicted_metric == pytest.approx(res.float_metric - res.predicted_loss)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_frontier_is_pareto_and_spans_the_uniform_choices(batches):
    res = search(mlp(), CANDS, "0.2x", batches)
    front = res.frontier
    assert all(a["cost_bytes"] < b["cost_bytes"] and a["predicted_loss"] > b["predicted_loss"]
               for a, b in zip(front, front[1:]))
    assert front[0]["cost_bytes"] == res.uniform["w4a16-g128"]["cost_bytes"]
    assert front[0]["counts"] == {"w4a16-g128": 4, "w8a16": 0}
    assert front[-1]["cost_bytes"] > res.budget_bytes  # the frontier goes past the budget
    assert front[-1]["cost_bytes"] == res.uniform["w8a16"]["cost_bytes"]
    best = min(p["predicted_loss"] for p in front if p["cost_bytes"] <= res.budget_bytes)
    assert res.predicted_loss == pytest.approx(best)


def test_float_candidate_and_groups(batches):
    res = search(mlp(), ["float", "w8a16"], "0.6x", batches, groups=[["2", "4"]])
    assert res.assignment["2"] == res.assignment["4"]
    assert ["2", "4"] in res.groups
    assert set(res.assignment.values()) <= {"float", "w8a16"}
    assert res.cost_bytes <= res.budget_bytes


def test_hessian_sensitivity_runs_without_a_sweep(batches):
    res = search(mlp(), CANDS, "5bits", batches, sensitivity="hessian")
    assert res.predicted_metric is None and res.sensitivity == "hessian"
    assert res.cost_bytes <= res.budget_bytes
    assert all(v["w8a16"]["loss"] < v["w4a16-g128"]["loss"] for v in res.table.values())


def test_save_writes_json_and_a_yaml_recipe_that_loads(tmp_path, batches):
    res = search(mlp(), CANDS, "0.25x", batches)
    paths = res.save(tmp_path)
    assert lowbit.Recipe.from_yaml(paths["recipe"]) == res.recipe
    assert paths["json"].read_text().startswith("{")


def test_errors(batches):
    with pytest.raises(ConfigError, match="at least .* bytes"):
        search(mlp(), CANDS, 100, batches)
    with pytest.raises(ConfigError, match="sensitivity"):
        search(mlp(), CANDS, "0.3x", batches, sensitivity="guess")


def test_lowbit_search_is_the_search_function(batches):
    direct = search(mlp(), CANDS, "0.25x", batches)
    via_package = lowbit.search(mlp(), CANDS, "0.25x", batches)
    assert via_package.assignment == direct.assignment


def test_public_names():
    import lowbit.search.knapsack as knapsack_module

    from lowbit.search.mixed import search as search_function

    assert callable(lowbit.search) and lowbit.search.__name__ == "lowbit.search"
    assert knapsack_module is lowbit.search.knapsack  # still a package
    assert lowbit.search.search is search_function
    assert callable(lowbit.analyze) and lowbit.Budget(bits=4).bits == 4
