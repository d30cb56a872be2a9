"""Reports: what quantization cost and bought (layer L7: reads models, never modifies them).

:func:`compare` measures models side by side; :func:`analyze` diagnoses one recipe layer by
layer; :func:`write_report` (in :mod:`.html`, needs matplotlib) writes it as HTML/JSON/PNGs.
"""

from .analysis import Analysis, analyze
from .comparison import ComparisonResult, ModelStats, compare
from .html import write_report

__all__ = ["Analysis", "ComparisonResult", "ModelStats", "analyze", "compare", "write_report"]
