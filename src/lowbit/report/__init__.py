"""Reports: what quantization cost and bought (layer L7: reads models, never modifies them)."""

from .comparison import ComparisonResult, ModelStats, compare

__all__ = ["ComparisonResult", "ModelStats", "compare"]
