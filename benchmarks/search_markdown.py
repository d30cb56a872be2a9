"""The Markdown page of ``bench_search.py``'s results (``results/search.md``)."""

from __future__ import annotations


def markdown(r: dict) -> str:
    m, d = r["minilm"], r["digits"]
    lines = ["# Mixed-precision search and diagnostics", "",
             f"CPU: {r['cpu']['model']} ({r['cpu']['cores']} cores, {r['cpu']['threads']} "
             f"threads, flags {' '.join(r['cpu']['flags'])}; load average at start "
             f"{r['cpu']['loadavg_at_start']:.1f}), torch {r['torch']}. "
             "Produced by `python benchmarks/bench_search.py`. Parts run at different times; "
             "load average at the end of each part: " + ", ".join(
                 f"{k} {v['loadavg_at_start']:.1f}" for k, v in r.get("cpu_per_part", {}).items())
             + ".", "",
             f"## MiniLM-L6, candidates {{{', '.join(m['candidates'])}}}", "",
             f"Budget {m['budget_bytes']} bytes, halfway between all-w4a16-g128 "
             f"({m['bytes_all_small']}) and all-w8a16 ({m['bytes_all_big']}). "
             f"Metric: {m['metric']} (float {m['float']:.6f}).", "",
             "| assignment | embedding cosine to float |", "|---|---|",
             f"| searched (exact knapsack, {m['searched']['n_big']}/{m['searched']['n_layers']} "
             f"layers at w8a16, {m['searched']['bytes']} bytes) | {m['searched']['measured']:.6f} |",
             f"| best of 20 random at the same budget | {m['random_20']['best']:.6f} |",
             f"| mean of 20 random | {m['random_20']['mean']:.6f} |",
             f"| greedy (loss saved per byte) | {m['greedy']:.6f} |",
             f"| uniform w4a16-g128 | {m['uniform_w4a16_g128']:.6f} |", "",
             f"Predicted cosine of the searched recipe (float minus summed one-layer losses): "
             f"{m['searched']['predicted']:.6f}.", "",
             f"Spearman rank correlation of the Hessian estimate (trace x weight noise, "
             f"{m['hessian_method']}) with the measured one-layer loss over "
             f"{m['spearman_layers']} layers: **{m['spearman_hessian_vs_measured']:.3f}**.", "",
             f"Wall time: search {m['seconds']['search']:.0f} s, Hessian traces "
             f"{m['seconds']['hessian_traces']:.0f} s.", "",
             ] + _greedy_lines(m) + _sweep_lines(r.get("sweep")) + _analyze_lines(r.get("analyze")) \
        + _digits_lines(d)
    return "\n".join(lines) + "\n"


def _greedy_lines(m: dict) -> list[str]:
    k = m.get("knapsack_vs_greedy")
    if not k:
        return []
    out = ["", "### Exact knapsack against greedy, 41 budgets from all-w4a16-g128 to all-w8a16", "",
           f"Predicted loss = sum of the measured one-layer losses (resolution "
           f"{k['resolution_bytes']:.0f} bytes). The searched and greedy assignments at the "
           f"halfway budget are {'the same' if m.get('greedy_same_assignment') else 'different'}"
           f". Budgets where the exact solution differs from greedy: {k['n_differ']} of 41; "
           f"largest gap in predicted loss {k['largest_gap']:.2e} at "
           f"{k['largest_gap_budget_bytes']} bytes."]
    if k.get("measured_at_largest_gap"):
        g = k["measured_at_largest_gap"]
        out.append(f"Measured there: exact {g['exact']:.6f}, greedy {g['greedy']:.6f} "
                   "(embedding cosine to float).")
    return out


def _sweep_lines(s: dict | None) -> list[str]:
    if not s:
        return []
    out = ["", f"### Float-only sweep, MiniLM w8a8 ({s['layers']} layers, 1 batch of 8 sentences,"
           " 1 thread)", "", "| weights | CPU s | wall s | load avg start/end |", "|---|---|---|---|"]
    for r in s["runs"]:
        out.append(f"| {r['weights']} | {r['cpu_seconds']:.1f} | {r['seconds']:.1f} | "
                   f"{r['loadavg_start_end'][0]:.1f} / {r['loadavg_start_end'][1]:.1f} |")
    out.append(f"Weights quantized once take {s['cpu_ratio']:.1f}x less CPU; losses identical: "
               f"{s['identical_losses']}.")
    return out


def _analyze_lines(a: dict | None) -> list[str]:
    if a and "seconds" in a:  # written before the sweeps quantized weights once
        return ["", f"`analyze(minilm, 'w8a8')` with both sweeps (on the metric, weights "
                f"re-quantized every forward) and Hessian traces: {a['seconds']:.0f} s wall "
                f"({a['layers']} layers), float-only sweep {a['parts']['float_only']:.0f} s."]
    if not a or "sweep_batches=1" not in a:
        return ["", "`analyze(minilm)` cost: not measured in this run."]
    out = ["", "### Cost of `analyze(minilm, 'w8a8')` (40 layers, both sweeps, Hessian traces "
           "with 2 probes per batch on 4 x 32 sentences, 2 threads)", "",
           "| sweeps scored by | wall s | CPU s (this process) | load avg start/end | "
           "peak RSS MiB (model loaded before) | float-only sweep s | quantize-only s | "
           "Hessian s |", "|---|---|---|---|---|---|---|---|"]
    for label, v in a.items():
        if not isinstance(v, dict):
            continue
        p = v["parts"]
        out.append(f"| {label} | {v['seconds']:.0f} | {v['cpu_seconds']:.0f} | "
                   f"{v['loadavg_start_end'][0]:.1f} / {v['loadavg_start_end'][1]:.1f} | "
                   f"{v['peak_rss_mib']:.0f} ({v['rss_before_mib']:.0f}) | "
                   f"{p.get('float_only', 0):.0f} | {p.get('quantize_only', 0):.0f} | "
                   f"{p.get('hessian', 0):.0f} |")
    out.append(f"Float model parameters: {a['float_model_mib']:.0f} MiB." +
               (f" Note: {a['note']}." if a.get("note") else ""))
    return out


def _digits_lines(d: dict) -> list[str]:
    out = ["", "## digits CNN, w4a4", "",
           f"Accuracy: float {d['float']:.2f} %, w4a4 {d['w4a4']:.2f} %. The report names "
           f"`{d['worst_layer']}` as losing most alone; keeping it at 8 bits gives "
           f"{d['worst_layer_at_8_bits']:.2f} % ({d['recovered_fraction']:.0%} of the loss "
           "recovered).", ""]
    if "per_layer" in d:
        out += [f"No single layer recovers half: the best one at 8 bits recovers "
                f"{d['best_single_layer_at_8_bits']:.0%}, and even kept float "
                f"{d['best_single_layer_float']:.0%}. The report's format-wide advice "
                f"(non-negative inputs on a signed symmetric grid: use AFFINE) gives "
                f"{d['w4a4_affine_activations']:.2f} % ({d['affine_recovered_fraction']:.0%} "
                "of the loss recovered).", ""]
    out += ["| layer | loss alone (points) | recovered keeping it float (sweep) | "
            "accuracy with it at 8 bits | with it float |", "|---|---|---|---|---|"]
    for name, loss in d["quantize_only_losses"].items():
        pl = d.get("per_layer", {}).get(name, {})
        out.append(f"| {name} | {loss:.2f} | {d['float_only_recovery'][name]:.2f} | "
                   f"{pl.get('at_8_bits', float('nan')):.2f} | {pl.get('float', float('nan')):.2f} |")
    out += ["", "Advice from the report:", ""] + [f"- {a}" for a in d["advice"]]
    return out
