"""Range finders (observers) with mergeable, checkpointable state.

``make_observer(spec)`` builds the observer registered for ``spec.method``:
``minmax``, ``moving_average``, ``percentile``, ``mse``, ``entropy`` or ``auto``.
"""

from .auto import AutoObserver
from .base import Observer
from .entropy import EntropyObserver
from .hist_base import HistogramObserver
from .minmax import MinMaxObserver
from .moving_average import MovingAverageObserver
from .mse import MSEObserver
from .percentile import PercentileObserver
from .registry import OBSERVERS, make_observer, register_observer

__all__ = ["Observer", "OBSERVERS", "make_observer", "register_observer", "MinMaxObserver",
           "MovingAverageObserver", "PercentileObserver", "MSEObserver", "EntropyObserver",
           "AutoObserver", "HistogramObserver"]
