"""Exact multiple-choice knapsack: one option per group, least total error within a budget.

Each group ``g`` (a layer, or layers that must share a format) offers options ``k`` with an
integer cost ``c[g][k]`` (in cost units) and an error ``e[g][k]``. The solver picks one option
per group so that ``sum c <= budget`` and ``sum e`` is as small as possible.

Dynamic programming over the cost: ``F_g(b)`` is the least error of groups ``0..g`` that fits
in ``b`` units,

    F_{-1}(b) = 0,    F_g(b) = min_{k : c[g][k] <= b} F_{g-1}(b - c[g][k]) + e[g][k],

for every ``b`` in ``0..budget``; the arg-min per ``(g, b)`` is kept to read back the choice.
This is exact for integer costs (no greedy step, no relaxation) and takes
``O(groups x options x budget)`` time and ``O(groups x budget)`` memory. Because ``F`` is
known for every budget at once, the whole size/error Pareto frontier comes out of one solve.

Costs in bytes are mapped to units by :func:`to_units`: costs rounded *up* and the budget
*down*, so a solution in units never exceeds the budget in bytes; the price is at most one
unit of slack per group (the stated resolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError, InputError

#: Default largest number of cost units a budget is split into (the DP's table width).
MAX_UNITS = 20_000


@dataclass(frozen=True)
class Solution:
    """One optimal choice: ``choice[g]`` is the option picked for group ``g``."""

    choice: tuple[int, ...]
    cost: int          # total cost in units
    error: float       # total error


@dataclass(frozen=True)
class Units:
    """Integer costs and budget at a resolution of ``unit`` (original cost units per unit)."""

    costs: list[list[int]]
    budget: int
    unit: float


def to_units(costs: Sequence[Sequence[float]], budget: float, max_units: int = MAX_UNITS,
             unit: float | None = None) -> Units:
    """Integer units for a knapsack in any cost scale (e.g. bytes).

    ``unit`` (default: ``budget / max_units``, at least 1) is the resolution; each cost is
    rounded up to whole units and the budget down, so a feasible choice in units is feasible
    in the original scale.
    """
    if not math.isfinite(budget) or budget < 0:
        raise ConfigError("budget", budget, "a finite number >= 0", fix="pass a size budget")
    if unit is None:
        unit = max(1.0, budget / max_units)
    if not unit > 0:
        raise ConfigError("unit", unit, "a number > 0", fix="e.g. unit=1 (one byte)")
    int_costs = [[int(math.ceil(c / unit - 1e-9)) for c in group] for group in costs]
    return Units(int_costs, int(math.floor(budget / unit + 1e-9)), float(unit))


def _check(costs: Sequence[Sequence[int]], errors: Sequence[Sequence[float]], budget: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ConfigError("budget", budget, "an integer >= 0 (cost units)",
                          fix="convert a byte budget with lowbit.search.knapsack.to_units")
    if len(costs) != len(errors) or not costs:
        raise InputError(f"knapsack: {len(costs)} cost groups and {len(errors)} error groups; "
                         "pass one non-empty list of options per group in both")
    for g, (c, e) in enumerate(zip(costs, errors)):
        if len(c) != len(e) or not c:
            raise InputError(f"knapsack: group {g} has {len(c)} costs and {len(e)} errors; "
                             "give each option one cost and one error")
        if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0 for x in c):
            raise InputError(f"knapsack: group {g} costs {list(c)} must be integers >= 0 "
                             "(use to_units for byte costs)")
        if not all(math.isfinite(float(x)) for x in e):
            raise InputError(f"knapsack: group {g} errors {list(e)} must be finite")


class Knapsack:
    """The solved DP: the best choice for any budget up to the one it was built for."""

    def __init__(self, costs: Sequence[Sequence[int]], errors: Sequence[Sequence[float]],
                 budget: int):
        _check(costs, errors, budget)
        self.costs = [list(map(int, c)) for c in costs]
        self.errors = [list(map(float, e)) for e in errors]
        self.budget = int(budget)
        width = self.budget + 1
        best = np.zeros(width)                                       # F_{-1}(b) = 0
        self._pick = np.zeros((len(costs), width), dtype=np.int32)   # arg-min per (g, b)
        for g, (c, e) in enumerate(zip(self.costs, self.errors)):
            new = np.full(width, np.inf)
            pick = np.full(width, -1, dtype=np.int32)
            for k, (ck, ek) in enumerate(zip(c, e)):
                if ck > self.budget:
                    continue
                cand = np.full(width, np.inf)
                cand[ck:] = best[:width - ck] + ek                   # F_{g-1}(b - c) + e
                better = cand < new
                new[better] = cand[better]
                pick[better] = k
            best = new
            self._pick[g] = pick
        self.best = best                                             # F_last(b) for every b

    def feasible(self, budget: int | None = None) -> bool:
        """True when some choice fits in ``budget`` units (default: the built budget)."""
        b = self.budget if budget is None else budget
        return bool(np.isfinite(self.best[min(b, self.budget)]))

    def solve(self, budget: int | None = None) -> Solution:
        """The least-error choice within ``budget`` units (default: the built budget)."""
        b = self.budget if budget is None else int(budget)
        if not 0 <= b <= self.budget:
            raise ConfigError("budget", b, f"an integer in [0, {self.budget}]",
                              fix="build the Knapsack with the largest budget you will ask for")
        if not np.isfinite(self.best[b]):
            cheapest = sum(min(c) for c in self.costs)
            raise ConfigError("budget", b, f"at least {cheapest} units (every group's cheapest "
                              "option)", fix="raise the budget or add a cheaper candidate")
        choice = []
        for g in range(len(self.costs) - 1, -1, -1):
            k = int(self._pick[g, b])
            choice.append(k)
            b -= self.costs[g][k]
        choice.reverse()
        cost = sum(self.costs[g][k] for g, k in enumerate(choice))
        error = sum(self.errors[g][k] for g, k in enumerate(choice))
        return Solution(tuple(choice), cost, error)

    def frontier(self) -> list[Solution]:
        """The Pareto frontier: for each budget where the least error drops, its solution,
        cheapest first (every other choice costs more or errs more than one of these)."""
        out: list[Solution] = []
        last = np.inf
        for b in range(self.budget + 1):
            if self.best[b] < last - 1e-12 * max(1.0, abs(last) if np.isfinite(last) else 1.0):
                sol = self.solve(b)
                out.append(sol)
                last = self.best[b]
        return out


def solve_knapsack(costs: Sequence[Sequence[int]], errors: Sequence[Sequence[float]],
                   budget: int) -> Solution:
    """The exact least-error choice of one option per group within ``budget`` (integers)."""
    return Knapsack(costs, errors, budget).solve()
