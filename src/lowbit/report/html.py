"""Write an analysis as a report people read: one self-contained HTML file, its JSON and PNGs.

``write_report(analysis, out_dir)`` writes ``report.json``, ``sqnr.png``,
``sensitivity.png``, ``histograms.png`` (and ``pareto.png`` when the analysis carries a
search) and ``report.html``, which inlines its styles and the PNGs as data URIs so that it
opens anywhere with no network and no other file.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from ..errors import ConfigError
from . import plots
from .analysis import Analysis

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.82em;width:100%}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}
.advice li{margin:.4em 0}.evidence{color:#666;font-size:.85em}
img{max-width:100%;border:1px solid #eee}.kv td{text-align:left}
.worst{background:#fde9e7}
"""

# Marks the page once loaded with how many of its images decoded (read by the browser test;
# the page needs no script to be read).
_SELF_CHECK = """<script>window.addEventListener('load',function(){var d=document.images,n=0;
for(var i=0;i<d.length;i++){if(d[i].complete&&d[i].naturalWidth>0){n++;}}
document.body.setAttribute('data-images-loaded',n+'/'+d.length);});</script>"""


def _e(x) -> str:
    return html.escape(str(x))


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    return f"{v:.{digits}g}"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _layer_table(a: Analysis) -> str:
    worst = a.worst_layer()
    head = ("layer", "type", "weight", "act", "W SQNR dB", "in SQNR dB", "out SQNR dB",
            "act sat", "observed range", "clip range", "only-this-quantized loss",
            "only-this-float recovery", "Hessian est.", "kernel")
    rows = []
    for l in a.layers:
        s = l["sensitivity"]
        rng = lambda r: "–" if not r else f"[{_f(r[0])}, {_f(r[1])}]"  # noqa: E731
        cells = (l["name"], l["module_type"], l["weight"] or "float", l["act"] or "float",
                 _f(l["weight_sqnr_db"]), _f(l["act_sqnr_db"]), _f(l["out_sqnr_db"]),
                 "–" if l["act_sat_ratio"] is None else f"{l['act_sat_ratio']:.2%}",
                 rng(l["observed_range"]), rng(l["clip_range"]), _f(s.get("quantize_only")),
                 _f(s.get("float_only")), _f(s.get("hessian_estimate")), l.get("kernel") or "–")
        cls = ' class="worst"' if l["name"] == worst else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def _advice(a: Analysis) -> str:
    if not a.advice:
        return "<p>No rule fired: no layer stands out.</p>"
    items = []
    for item in a.advice:
        ev = ", ".join(f"{k}={_f(v) if not isinstance(v, (dict, list)) else _e(v)}"
                       for k, v in item["evidence"].items())
        items.append(f"<li><b>{_e(item['rule'])}</b>: {_e(item['message'])}"
                     f"<div class=evidence>evidence: {ev}</div></li>")
    return '<ul class="advice">' + "".join(items) + "</ul>"


def _search(s: dict) -> str:
    rows = [("budget", f"{s['budget']} = {s['budget_bytes']:.0f} bytes (resolution "
                       f"{s['resolution_bytes']:.0f} bytes)"),
            ("chosen", f"{s['cost_bytes']} bytes for the searched layers (float: "
                       f"{s['float_layer_bytes']})"),
            ("predicted " + s["metric_name"], _f(s["predicted_metric"], 6)),
            ("measured " + s["metric_name"], _f(s["measured_metric"], 6)),
            ("float " + s["metric_name"], _f(s["float_metric"], 6)),
            ("whole model", f"{s['model_float_bytes']} → {s['model_bytes']} bytes")]
    counts: dict[str, int] = {}
    for cand in s["assignment"].values():
        counts[cand] = counts.get(cand, 0) + 1
    rows.append(("layers per candidate", ", ".join(f"{k}: {v}" for k, v in counts.items())))
    return '<table class="kv">' + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
                                          for k, v in rows) + "</table>"


def write_report(analysis: Analysis, out_dir: str | Path, title: str = "lowbit report"
                 ) -> dict[str, Path]:
    """Write the JSON, PNGs and the self-contained HTML into ``out_dir``; return the paths."""
    if not isinstance(analysis, Analysis):
        raise ConfigError("analysis", type(analysis).__name__, "the Analysis lowbit.analyze "
                          "returns", fix="write_report(lowbit.analyze(model, recipe, batches), "
                                         "out_dir), or Analysis.load_json(path)")
    if not isinstance(out_dir, (str, Path)) or not str(out_dir):
        raise ConfigError("out_dir", out_dir, "a directory path (str or pathlib.Path)",
                          fix="pass e.g. out_dir='report'")
    if not isinstance(title, str):
        raise ConfigError("title", title, "a string", fix="pass e.g. title='my model, w8a8'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": analysis.save_json(out / "report.json"),
             "sqnr": plots.sqnr_bars(analysis.layers, out / "sqnr.png"),
             "sensitivity": plots.sensitivity_bars(analysis.layers, analysis.sweep_metric_name,
                                                   out / "sensitivity.png"),
             "histograms": plots.histograms(analysis.layers, out / "histograms.png")}
    if analysis.search:
        paths["pareto"] = plots.pareto(analysis.search, out / "pareto.png")
    m = analysis.model
    summary = [("recipe", analysis.recipe.get("name")),
               (f"float {analysis.metric_name}", _f(analysis.float_metric, 6)),
               (f"quantized {analysis.metric_name}", _f(analysis.quantized_metric, 6)),
               ("size", f"{m['float_bytes']} → {m['quantized_bytes']} bytes "
                        f"({_f(m['compression'])}x)"),
               ("layers quantized", m["n_quantized"]),
               ("kernels", ", ".join(sorted(set(m["kernels"].values()))) or "–"),
               ("not quantized", "; ".join(f"{r['name']}: {r['action']} ({r['reason']})"
                                           for r in m["not_quantized"]) or "none"),
               ("time (s)", ", ".join(f"{k} {v:.1f}" for k, v in analysis.seconds.items()))]
    if analysis.hessian:
        summary.append(("Hessian", f"{analysis.hessian['method']}, "
                                   f"{analysis.hessian['n_probes']} probes/batch, loss: "
                                   f"{analysis.hessian['loss']}"))
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}"
             f"</title><style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
             "<h2>Summary</h2><table class=kv>"
             + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in summary)
             + "</table>",
             "<h2>Advice</h2>" + _advice(analysis),
             "<h2>Sensitivity</h2>" + _img(paths["sensitivity"], "sensitivity per layer"),
             "<h2>SQNR</h2>" + _img(paths["sqnr"], "SQNR per layer"),
             "<h2>Layer inputs</h2>" + _img(paths["histograms"], "input histograms"),
             "<h2>Layers</h2>" + _layer_table(analysis)]
    if analysis.search:
        parts.append("<h2>Mixed-precision search</h2>" + _search(analysis.search)
                     + _img(paths["pareto"], "size versus quality"))
    parts.append(_SELF_CHECK + "</body></html>")
    paths["html"] = out / "report.html"
    paths["html"].write_text("\n".join(parts), encoding="utf-8")
    return paths
