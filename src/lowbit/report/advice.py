"""Rule-based advice: each rule reads the analysis's numbers and, when it fires, says what to
change and shows the numbers that made it fire.

Rules (thresholds are the module constants):

``clip``        a static activation range loses >= CLIP_GAIN_DB of SQNR against another
                calibration method on the same layer's sampled inputs: use that method.
``sensitive``   a layer causes >= SENSITIVE_SHARE of the summed one-layer losses on its
                own: keep it float or give it 8 bits.
``spread``      no layer causes as much as SPREAD_SHARE of the summed one-layer losses, so
                no single layer at higher precision recovers that much: change the format
                of all layers (the other rules) or search per-layer formats. It replaces
                ``sensitive`` (whose one-layer fix would recover too little).
``granularity`` per-tensor weights lose >= GRANULARITY_GAIN_DB against per-channel.
``saturation``  more than SATURATION of a layer's calibration activations are clipped.
``unsigned``    a layer's inputs were never negative but its activation grid is signed and
                symmetric, so half of the codes are never used: use an AFFINE scheme.
"""

from __future__ import annotations

import math

CLIP_GAIN_DB = 1.0
SENSITIVE_SHARE = 0.25
SPREAD_SHARE = 0.5
GRANULARITY_GAIN_DB = 3.0
SATURATION = 0.01


def _fmt(x: float | None, unit: str = "", digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}{unit}"


def advise(layers: list[dict], metric_name: str) -> list[dict]:
    """Advice items ``{rule, layer, layers, message, evidence}`` for the analysed ``layers``;
    a rule that fires with the same fix on several layers gives one item naming them all
    (``layers`` lists them, ``layer`` joins them, ``evidence`` maps each to its numbers)."""
    items = _per_layer(layers, metric_name)
    for item in items:
        item.setdefault("layers", [item["layer"]])
    return merge(items)


def merge(items: list[dict]) -> list[dict]:
    """Join items of the same rule and ``fix`` into one (items without ``fix`` stay)."""
    out: list[dict] = []
    groups: dict[tuple, list[dict]] = {}
    for item in items:
        key = (item["rule"], item.get("fix"))
        if item.get("fix") is None:
            out.append(item)
        elif key in groups:
            groups[key].append(item)
        else:
            groups[key] = [item]
            out.append(item)  # placeholder, replaced below
    merged = []
    for item in out:
        group = groups.get((item["rule"], item.get("fix"))) if item.get("fix") else None
        if not group or len(group) == 1:
            merged.append(item)
            continue
        if item is not group[0]:
            continue
        names = [g["layer"] for g in group]
        merged.append({"rule": item["rule"], "layer": ", ".join(names), "layers": names,
                       "fix": item["fix"],
                       "message": f"{len(names)} layers ({', '.join(names)}): "
                                  f"{group[0]['summary']}: {item['fix']}",
                       "evidence": {g["layer"]: g["evidence"] for g in group}})
    return merged


def _per_layer(layers: list[dict], metric_name: str) -> list[dict]:
    out: list[dict] = []
    alone = {l["name"]: l["sensitivity"].get("quantize_only") for l in layers}
    total = sum(v for v in alone.values() if v is not None and v > 0)
    ranked = sorted((v, n) for n, v in alone.items() if v is not None and v > 0)[::-1]
    if len(ranked) > 1 and total > 0 and ranked[0][0] / total < SPREAD_SHARE:
        top = ranked[0][0] / total
        best_rec = max((l["sensitivity"].get("float_only") for l in layers
                        if isinstance(l["sensitivity"].get("float_only"), (int, float))),
                       default=None)
        out.append({
            "rule": "spread", "layer": ", ".join(n for _, n in ranked),
            "layers": [n for _, n in ranked],
            "message": f"the loss is spread over {len(ranked)} layers: the largest one-layer "
                       f"loss is {top:.0%} of their sum, so no single layer at higher "
                       "precision recovers half of it; change the format of every layer "
                       "(see the other advice) or search per-layer formats (lowbit search)",
            "evidence": {"shares": {n: v / total for v, n in ranked},
                         "largest_float_only_recovery": best_rec}})
    for loss, name in ranked[:2] if not out else []:
        share = loss / total if total > 0 else 0.0
        if share < SENSITIVE_SHARE:
            break
        layer = next(l for l in layers if l["name"] == name)
        rec = layer["sensitivity"].get("float_only")
        out.append({
            "rule": "sensitive", "layer": name,
            "message": f"{name} loses {loss:.4g} {metric_name} on its own ({share:.0%} of all "
                       f"one-layer losses): keep it float or at 8 bits",
            "evidence": {"quantize_only_loss": loss, "share": share,
                         "float_only_recovery": rec,
                         "hessian_rank": layer["sensitivity"].get("hessian_rank")}})
    for layer in layers:
        name = layer["name"]
        alt = layer.get("clip_alternatives") or {}
        current = layer.get("act_sample_sqnr_db")
        if alt and current is not None and math.isfinite(current):
            best = max(alt, key=lambda k: alt[k] if alt[k] is not None else -math.inf)
            gain = (alt[best] or -math.inf) - current
            if gain >= CLIP_GAIN_DB:
                out.append({
                    "rule": "clip", "layer": name, "fix": f"use {best}",
                    "summary": f"activations calibrated with {layer['act_method']} lose "
                               f"SQNR against {best}",
                    "message": f"{name}: activations calibrated with {layer['act_method']} give "
                               f"{_fmt(current, ' dB', 1)}; {best} gives "
                               f"{_fmt(alt[best], ' dB', 1)} (+{gain:.1f} dB): use {best}",
                    "evidence": {"method": layer["act_method"], "sqnr_db": current,
                                 "alternatives_db": alt,
                                 "act_sat_ratio": layer.get("act_sat_ratio")}})
        sat = layer.get("act_sat_ratio")
        if sat is not None and sat > SATURATION:
            out.append({
                "rule": "saturation", "layer": name,
                "fix": "widen the range (minmax, percentile:99.99 or mse)",
                "summary": f"more than {SATURATION:.0%} of calibration activations saturate",
                "message": f"{name} saturates {sat:.1%} of its calibration activations: widen "
                           "the range (minmax, percentile:99.99 or mse)",
                "evidence": {"act_sat_ratio": sat, "clip_range": layer.get("clip_range"),
                             "observed_range": layer.get("observed_range")}})
        obs, act = layer.get("observed_range"), layer.get("act_scheme")
        if obs and obs[0] >= 0 and act is not None and tuple(act) == ("symmetric", True):
            out.append({
                "rule": "unsigned", "layer": name,
                "fix": "use Scheme.AFFINE (one more bit of resolution)",
                "summary": "inputs are never negative but the activation grid is signed and "
                           "symmetric, so half its codes go unused",
                "message": f"{name}: inputs are never negative (observed [{obs[0]:.3g}, "
                           f"{obs[1]:.3g}]) but the activation grid is signed and symmetric, "
                           "so half its codes go unused: use Scheme.AFFINE (one more bit of "
                           "resolution)",
                "evidence": {"observed_range": obs, "clip_range": layer.get("clip_range")}})
        w, pc = layer.get("weight_sqnr_db"), layer.get("weight_sqnr_per_channel_db")
        if w is not None and pc is not None and pc - w >= GRANULARITY_GAIN_DB:
            out.append({
                "rule": "granularity", "layer": name, "fix": "use PerChannel(0)",
                "summary": f"per-tensor weights lose >= {GRANULARITY_GAIN_DB:g} dB against "
                           "per-channel",
                "message": f"{name}: per-tensor weights lose {pc - w:.1f} dB against "
                           "per-channel: use PerChannel(0)",
                "evidence": {"per_tensor_db": w, "per_channel_db": pc}})
    return out
