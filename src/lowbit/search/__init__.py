"""Mixed precision: per-layer sensitivity, Hessian traces and an exact bit allocation.

``lowbit.search(model, candidates, budget, calib_data)`` (:func:`.mixed.search`) picks a
format per layer under a size budget with an exact multiple-choice knapsack
(:mod:`.knapsack`). The package itself is callable so that ``lowbit.search(...)`` is that
function while ``lowbit.search.knapsack`` and the other modules stay reachable as usual.
"""

import sys
import types

from .budget import Budget, parse_budget
from .candidates import Candidate, parse_candidates
from .hessian import HessianTraces, hutchinson_traces, predicted_loss
from .knapsack import Knapsack, solve_knapsack, to_units
from .mixed import SearchResult, search
from .scoring import Scorer
from .sensitivity import Sweep, float_only, quantize_only

__all__ = ["Budget", "Candidate", "HessianTraces", "Knapsack", "Scorer", "SearchResult",
           "Sweep", "float_only", "hutchinson_traces", "parse_budget", "parse_candidates",
           "predicted_loss", "quantize_only", "search", "solve_knapsack", "to_units"]


class _CallablePackage(types.ModuleType):
    """This package, callable: ``lowbit.search(...)`` is :func:`lowbit.search.mixed.search`."""

    def __call__(self, *args, **kwargs) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
