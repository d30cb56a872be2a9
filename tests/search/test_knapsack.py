"""The knapsack is exact: it matches brute force on random instances and respects the budget."""

import itertools
import random

import pytest

from lowbit.errors import ConfigError, InputError
from lowbit.search.knapsack import Knapsack, solve_knapsack, to_units


def brute_force(costs, errors, budget):
    """Least total error over every assignment that fits (None if none fits)."""
    best = None
    for choice in itertools.product(*(range(len(c)) for c in costs)):
        cost = sum(costs[g][k] for g, k in enumerate(choice))
        if cost <= budget:
            err = sum(errors[g][k] for g, k in enumerate(choice))
            best = err if best is None or err < best else best
    return best


def random_instance(rng, groups, options, max_cost=20):
    costs = [[rng.randint(0, max_cost) for _ in range(options)] for _ in range(groups)]
    errors = [[rng.uniform(-1.0, 5.0) for _ in range(options)] for _ in range(groups)]
    return costs, errors


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_on_random_instances(seed):
    rng = random.Random(seed)
    costs, errors = random_instance(rng, rng.randint(1, 6), rng.randint(1, 4))
    cheapest = sum(min(c) for c in costs)
    budget = rng.randint(cheapest, cheapest + 40)
    sol = solve_knapsack(costs, errors, budget)
    assert sol.cost <= budget
    assert sol.cost == sum(costs[g][k] for g, k in enumerate(sol.choice))
    assert sol.error == pytest.approx(sum(errors[g][k] for g, k in enumerate(sol.choice)))
    assert sol.error == pytest.approx(brute_force(costs, errors, budget))


def test_every_budget_of_one_solve_is_exact_and_the_frontier_is_pareto():
    rng = random.Random(7)
    costs, errors = random_instance(rng, 5, 3)
    ks = Knapsack(costs, errors, 80)
    for b in range(81):
        expected = brute_force(costs, errors, b)
        assert ks.feasible(b) == (expected is not None)
        if expected is not None:
            assert ks.solve(b).error == pytest.approx(expected)
    front = ks.frontier()
    assert [s.cost for s in front] == sorted(s.cost for s in front)
    assert all(a.error > b.error for a, b in zip(front, front[1:]))  # strictly better each step
    for sol in front:  # no assignment is cheaper and at least as good
        for choice in itertools.product(*(range(len(c)) for c in costs)):
            cost = sum(costs[g][k] for g, k in enumerate(choice))
            err = sum(errors[g][k] for g, k in enumerate(choice))
            assert not (cost < sol.cost and err < sol.error - 1e-9)


def test_to_units_rounds_costs_up_and_budget_down_so_bytes_are_respected():
    rng = random.Random(3)
    costs = [[rng.uniform(100, 5000) for _ in range(3)] for _ in range(6)]
    errors = [[rng.uniform(0, 1) for _ in range(3)] for _ in range(6)]
    budget = sum(min(c) for c in costs) * 1.6
    units = to_units(costs, budget, max_units=500)
    assert units.unit == pytest.approx(budget / 500)
    sol = solve_knapsack(units.costs, errors, units.budget)
    assert sum(costs[g][k] for g, k in enumerate(sol.choice)) <= budget


def test_infeasible_budget_and_bad_inputs_are_rejected():
    with pytest.raises(ConfigError, match="cheapest option"):
        solve_knapsack([[5, 6], [3]], [[0, 0], [0]], 7)
    with pytest.raises(ConfigError, match="budget"):
        solve_knapsack([[1]], [[0.0]], -1)
    with pytest.raises(InputError, match="group 0 has 2 costs and 1 errors"):
        solve_knapsack([[1, 2]], [[0.0]], 3)
    with pytest.raises(InputError, match="integers >= 0"):
        solve_knapsack([[1.5]], [[0.0]], 3)
    with pytest.raises(InputError, match="finite"):
        solve_knapsack([[1]], [[float("nan")]], 3)
    with pytest.raises(ConfigError, match="unit"):
        to_units([[1.0]], 10.0, unit=0.0)
