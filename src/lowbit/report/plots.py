"""PNG plots of an analysis (matplotlib, the ``plot`` extra; drawn off-screen with Agg).

Each function takes the analysis's plain data and a path, draws one figure and returns the
path: per-layer SQNR bars, per-layer sensitivity bars, input histograms with the clip range
and the observed range drawn, and the size-versus-quality Pareto plot of a search.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConfigError

MAX_HISTOGRAMS = 12


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots", "matplotlib missing", "matplotlib installed",
                          fix="pip install 'lowbit[plot]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _num(x) -> float:
    if x is None:
        return math.nan
    try:
        value = float(x)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def sqnr_bars(layers: list[dict], path: str | Path) -> Path:
    """Weight, input and output SQNR (dB) of every layer as grouped bars."""
    plt = _plt()
    names = [l["name"] for l in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 3.6))
    width = 0.27
    for i, (key, label) in enumerate((("weight_sqnr_db", "weight"), ("act_sqnr_db", "input"),
                                      ("out_sqnr_db", "output alone"))):
        xs = [j + (i - 1) * width for j in range(len(names))]
        ax.bar(xs, [_num(l.get(key)) for l in layers], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Signal-to-quantization-noise per layer (higher is better)")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def sensitivity_bars(layers: list[dict], metric: str, path: str | Path) -> Path:
    """Three panels: loss with only this layer quantized, loss recovered keeping only it
    float, and the Hessian estimate, per layer."""
    plt = _plt()
    names = [l["name"] for l in layers]
    panels = (("quantize_only", f"{metric} loss, only this layer quantized"),
              ("float_only", f"{metric} recovered, only this layer float"),
              ("hessian_estimate", "Hessian estimate 0.5 tr(H)/n ||dW||^2"))
    fig, axes = plt.subplots(1, 3, figsize=(13, max(3.0, 0.22 * len(names) + 1.2)), sharey=True)
    for ax, (key, title) in zip(axes, panels):
        vals = [_num(l["sensitivity"].get(key)) for l in layers]
        ax.barh(range(len(names)), vals, color="#c0504d" if key != "float_only" else "#4f81bd")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    return _save(fig, Path(path))


def histograms(layers: list[dict], path: str | Path, max_layers: int = MAX_HISTOGRAMS) -> Path:
    """Input histograms of the most sensitive layers (log counts), clip range in red,
    observed range dashed grey."""
    plt = _plt()
    with_hist = [l for l in layers if l.get("histogram")]
    with_hist.sort(key=lambda l: -_num(l["sensitivity"].get("quantize_only"))
                   if not math.isnan(_num(l["sensitivity"].get("quantize_only"))) else 0.0)
    chosen = with_hist[:max_layers]
    cols = 3
    rows = max(1, math.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(chosen):]:
        ax.axis("off")
    for ax, layer in zip(axes.flat, chosen):
        h = layer["histogram"]
        n = len(h["counts"])
        step = (h["hi"] - h["lo"]) / n
        ax.bar([h["lo"] + (i + 0.5) * step for i in range(n)], h["counts"], width=step,
               color="#7f7f7f", log=True)
        for v in layer.get("observed_range") or []:
            ax.axvline(v, color="#555555", linestyle="--", linewidth=1)
        for v in layer.get("clip_range") or []:
            ax.axvline(v, color="#d62728", linewidth=1.5)
        sat = layer.get("act_sat_ratio")
        ax.set_title(f"{layer['name']}" + (f"  (sat {sat:.2%})" if sat is not None else ""),
                     fontsize=8)
        ax.tick_params(labelsize=7)
    if not chosen:
        axes.flat[0].text(0.5, 0.5, "no layer inputs were sampled", ha="center")
    fig.suptitle("Layer inputs: red = clip range, dashed = observed range", fontsize=9)
    return _save(fig, Path(path))


def pareto(search: dict, path: str | Path) -> Path:
    """Predicted loss against stored bytes along the search's frontier, with the uniform
    assignments and the chosen recipe (predicted and measured)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    front = search["frontier"]
    ax.step([p["cost_bytes"] / 1e6 for p in front], [p["predicted_loss"] for p in front],
            where="post", label="frontier (predicted)", color="#4f81bd")
    ax.scatter([p["cost_bytes"] / 1e6 for p in front], [p["predicted_loss"] for p in front],
               s=8, color="#4f81bd")
    for name, u in search.get("uniform", {}).items():
        ax.scatter([u["cost_bytes"] / 1e6], [u["predicted_loss"]], marker="s", s=40,
                   label=f"all {name} (predicted)")
    if search.get("sensitivity") == "measured":  # the same units as the measured loss
        ax.scatter([search["cost_bytes"] / 1e6], [search["measured_loss"]], marker="*", s=160,
                   color="#d62728", label="chosen (measured)", zorder=5)
    ax.axvline(search["budget_bytes"] / 1e6, color="#999999", linestyle=":", label="budget")
    ax.set_xlabel("stored bytes of the searched layers (MB)")
    ax.set_ylabel(f"loss of {search['metric_name']} vs float" if search.get("sensitivity")
                  == "measured" else "summed Hessian estimates")
    ax.set_title("Size versus quality")
    ax.legend(fontsize=7)
    return _save(fig, Path(path))
