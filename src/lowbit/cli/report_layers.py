"""The per-layer summary printed at the end of ``quantize`` and ``eval``."""

from __future__ import annotations

from lowbit.cli.table import text_table

HEADERS = ("layer", "type", "action", "act sat", "note")


def layer_table(records) -> str:
    """One row per LayerRecord: name, type, action, activation saturation, kernel note or
    (for a layer not quantized) the reason."""
    rows = []
    for r in records:
        sat = r.metrics.get("act_sat_ratio")
        note = r.kernel_reason or ("" if r.action == "quantized" else r.reason)
        rows.append((r.name, r.module_type, r.action, None if sat is None else f"{sat:.2e}",
                     note or ""))  # last column: never cut, the reason is the point
    return text_table(HEADERS, rows)
