"""``analyze``: where a recipe loses accuracy, layer by layer, and what to change.

One calibration of ``recipe`` on ``calib_data``, then for every quantized layer:

* weight and activation SQNR, saturation ratio, the observed input range and the chosen clip
  range, the layer's output error alone, and a histogram of its inputs (:mod:`.layer_stats`);
* sensitivity three ways, each timed: the loss with only this layer quantized, the loss
  recovered by keeping only this layer float, and a Hessian estimate
  ``0.5 tr(H)/n ||dW||^2`` of the layer's weight noise (Hutchinson traces of the model's loss
  ``loss_fn`` or of the output MSE to float);
* advice with its evidence (:mod:`.advice`).

The metric is ``eval_fn(model)`` or, without one, the outputs' cosine to the float model on
``calib_data``. ``model`` is not modified. :class:`Analysis` is JSON-able.

Cost: the sweeps score the model twice per layer. With ``sweep_batches=N`` they score the
outputs' cosine to float on the first N calibration batches instead of calling ``eval_fn``
(the headline metrics still use ``eval_fn``), which is what makes a large model's analysis
cheap; ``Analysis.sweep`` says which metric the sweeps used. The float-only sweep quantizes
each weight once (:func:`~lowbit.search.sensitivity.baked_weights`). Memory: the prepared
copy of the model, plus one layer's extra output at a time and bounded samples.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import LayerConfig
from ..errors import ConfigError
from ..model.batches import call_checked, check_module
from ..model.convert import convert
from ..model.prepare import calibrate, lowbit_state, prepare, quant_modules
from ..model.size import estimate_model_size
from ..nn.qat import weight_matrix
from ..nn.quantizer import TensorQuantizer
from ..primitives.metrics import sqnr_db
from ..runtime import eval_mode
from ..search.hessian import hutchinson_traces, predicted_loss
from ..search.scoring import Scorer, as_batches
from ..search.sensitivity import float_only, quantize_only
from .advice import advise
from .layer_stats import collect

logger = logging.getLogger(__name__)

CLIP_METHODS = ("minmax", "percentile:99.99", "mse")
HIST_BINS = 80


@dataclass
class Analysis:
    """The result of :func:`analyze` (``to_dict``/``save_json``/``load_json``)."""

    recipe: dict
    metric_name: str
    higher_is_better: bool
    float_metric: float
    quantized_metric: float
    model: dict                      # float/quantized bytes, compression, kernels
    layers: list[dict]
    advice: list[dict]
    seconds: dict[str, float]
    hessian: dict = field(default_factory=dict)
    search: dict | None = None       # a SearchResult.to_dict(), when one is attached
    sweep: dict = field(default_factory=dict)   # the sweeps' metric and batches

    @property
    def sweep_metric_name(self) -> str:
        """The metric the sensitivity sweeps measured (the headline metric unless
        ``sweep_batches`` was set)."""
        return self.sweep.get("metric_name") or self.metric_name

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Analysis":
        """The Analysis :meth:`to_dict` wrote (a ConfigError names missing or unknown keys)."""
        fields = cls.__dataclass_fields__
        required = [k for k, f in fields.items() if f.default is MISSING
                    and f.default_factory is MISSING]
        if not isinstance(data, dict):
            raise ConfigError("Analysis data", type(data).__name__, "a dict from "
                              "Analysis.to_dict()", fix="pass the JSON lowbit report wrote "
                              "(Analysis.load_json(path))")
        unknown = sorted(set(data) - set(fields))
        missing = [k for k in required if k not in data]
        if unknown or missing:
            raise ConfigError("Analysis data", sorted(data), "the keys Analysis.to_dict() "
                              "writes", fix=f"remove {unknown}" if unknown else
                              f"add the missing key(s) {missing}")
        return cls(**data)

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (folders made); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        return path

    @classmethod
    def load_json(cls, path: str | Path) -> "Analysis":
        """Read the ``report.json`` that :meth:`save_json` (or ``lowbit report``) wrote."""
        if not isinstance(path, (str, Path)):
            raise ConfigError("path", type(path).__name__, "a path to report.json",
                              fix="pass e.g. 'report/report.json'")
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError("path", str(path), "a readable report.json written by lowbit",
                              fix=f"check the path ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]})") from None
        return cls.from_dict(data)

    def worst_layer(self, key: str = "quantize_only") -> str | None:
        """The layer with the largest sensitivity ``key`` (None if none measured). Ties (a
        coarse metric such as accuracy on a few hundred samples ties often) go to the larger
        float-only recovery, then the larger Hessian estimate, then the earlier layer."""
        def num(x):
            return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf

        vals = [(l["sensitivity"].get(key), num(l["sensitivity"].get("float_only")),
                 num(l["sensitivity"].get("hessian_estimate")), -i, l["name"])
                for i, l in enumerate(self.layers) if l["sensitivity"].get(key) is not None]
        return max(vals)[-1] if vals else None


def _json_default(obj: Any):
    return str(obj)  # e.g. a tensor or enum left in a user's eval output


def _finite(x):
    """JSON has no inf/nan: keep them as strings."""
    return x if x is None or not isinstance(x, float) or math.isfinite(x) else str(x)


def _clip_alternatives(module: nn.Module, sample: torch.Tensor) -> tuple[float | None, dict]:
    """SQNR of the sampled inputs under the layer's act range, and under other methods."""
    q = module.act_quantizer
    if q is None or q.spec.dynamic or sample.numel() < 16 or q.spec.frac_bits is not None:
        return None, {}
    current = sqnr_db(sample, q(sample))
    alt = {}
    for method in CLIP_METHODS:
        if method == q.spec.method:
            continue
        tq = TensorQuantizer(q.spec.replace(method=method))
        tq.freeze(sample)
        alt[method] = sqnr_db(sample, tq(sample))
    return current, alt


def _histogram(sample: torch.Tensor, lo: float, hi: float) -> dict | None:
    if sample.numel() == 0 or not hi > lo:
        return None
    counts = torch.histc(sample.float(), bins=HIST_BINS, min=lo, max=hi)
    return {"lo": lo, "hi": hi, "counts": [int(c) for c in counts]}


def analyze(model: nn.Module, recipe: Any, calib_data: Any,
            eval_fn: Callable[[nn.Module], float] | None = None, *,
            higher_is_better: bool = True, metric_name: str | None = None, max_batches: int | None = None,
            sweeps: bool = True, hessian: bool = True, n_probes: int = 4,
            loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
            sample_size: int = 4096, progress: Callable[[str], None] | None = None,
            sweep_batches: int | None = None) -> Analysis:
    """Analyse ``recipe`` on ``model`` (see the module docstring).

    sweeps: run the quantize-only and float-only sweeps (one score per layer each).
    sweep_batches: score the sweeps by output cosine to float on this many calibration
    batches instead of ``eval_fn`` (None: the analysis metric).
    hessian: estimate Hessian traces (``n_probes`` probes per batch; ``loss_fn(model, batch)``
    or the output MSE to float). max_batches: use at most this many batches of calib_data.
    """
    check_module(model)
    if sweep_batches is not None and (isinstance(sweep_batches, bool) or not isinstance(
            sweep_batches, int) or sweep_batches < 1):
        raise ConfigError("sweep_batches", sweep_batches, "None or an integer >= 1",
                          fix="e.g. sweep_batches=1, or None to sweep with eval_fn")
    batches = as_batches(calib_data, max_batches)
    with eval_mode(model):
        return _analyze(model, recipe, batches, eval_fn, higher_is_better, metric_name, sweeps,
                        hessian, n_probes, loss_fn, sample_size, progress, sweep_batches)


def _analyze(model, recipe, batches, eval_fn, higher_is_better, metric_name, sweeps, hessian,
             n_probes, loss_fn, sample_size, progress, sweep_batches) -> Analysis:
    times: dict[str, float] = {}
    t = time.perf_counter()
    scorer = Scorer(model, batches, eval_fn, higher_is_better, metric_name)
    sweep_scorer = scorer if sweep_batches is None else Scorer(model, batches[:sweep_batches])
    sweep_info = {"metric_name": sweep_scorer.name, "uses_eval_fn": sweep_scorer.eval_fn
                  is not None, "batches": None if sweep_scorer.eval_fn is not None
                  else len(sweep_scorer.batches)}
    qmodel = prepare(model, recipe, example_inputs=batches[0])
    with calibrate(qmodel), torch.no_grad():
        for i, batch in enumerate(batches):
            call_checked(qmodel, batch, i)
    state = lowbit_state(qmodel)
    quantized_metric = scorer.metric(qmodel)
    times["calibrate_and_score"] = time.perf_counter() - t
    t = time.perf_counter()
    stats = collect(qmodel, batches, sample_size)
    times["layer_stats"] = time.perf_counter() - t
    names = list(stats)
    sens: dict[str, dict] = {n: {} for n in names}
    if sweeps and names:
        alone = quantize_only(qmodel, sweep_scorer, progress=progress)
        rec = float_only(qmodel, sweep_scorer, progress=progress, source=model)
        times["quantize_only"], times["float_only"] = alone.seconds, rec.seconds
        for n in names:
            sens[n]["quantize_only"] = alone.losses[n]
            sens[n]["float_only"] = rec.losses[n]
    hess_info: dict = {}
    mods = dict(quant_modules(qmodel))
    weighted = [n for n in names if mods[n].weight_quantizer is not None]
    if hessian and weighted:
        traces = hutchinson_traces(model, {n: model.get_submodule(n).weight for n in weighted},
                                   batches, loss_fn=loss_fn, n_probes=n_probes)
        times["hessian"] = traces.seconds
        hess_info = {"method": traces.method, "n_probes": traces.n_probes,
                     "loss": "loss_fn" if loss_fn else "output MSE to float"}
        for n in weighted:
            w = weight_matrix(mods[n].weight).detach()
            noise = mods[n].weight_quantizer(w) - w
            sens[n]["hessian_trace"] = traces.trace[n]
            sens[n]["hessian_trace_stderr"] = traces.stderr[n]
            sens[n]["hessian_estimate"] = predicted_loss(traces.trace[n], traces.numel[n], noise)
        order = sorted(weighted, key=lambda n: -sens[n]["hessian_estimate"])
        for rank, n in enumerate(order, 1):
            sens[n]["hessian_rank"] = rank
    records = {r.name: r for r in state.records}
    layers = []
    for n in names:
        s, rec_, module = stats[n], records.get(n), mods[n]
        metrics = rec_.metrics if rec_ else {}
        current, alt = _clip_alternatives(module, s["sample"])
        obs, clip = s["observed_range"], s["clip_range"]
        lo = min([v for v in (obs or []) + list(clip or []) if v is not None], default=0.0)
        hi = max([v for v in (obs or []) + list(clip or []) if v is not None], default=0.0)
        config: LayerConfig = module.config
        layers.append({
            "name": n, "module_type": rec_.module_type if rec_ else type(module).__name__,
            "weight": None if config.weight is None else _spec_label(config.weight),
            "act": None if config.act is None else _spec_label(config.act),
            "act_method": None if config.act is None else config.act.method,
            "act_scheme": None if config.act is None or config.act.dynamic else
            (config.act.scheme.value, config.act.qtype.signed),
            "numel": int(module.weight.numel()),
            "weight_sqnr_db": _finite(s["weight_sqnr_db"]),
            "weight_sqnr_per_channel_db": _finite(s["weight_sqnr_per_channel_db"]),
            "act_sqnr_db": _finite(s["act_sqnr_db"]), "out_sqnr_db": _finite(s["out_sqnr_db"]),
            "act_sat_ratio": metrics.get("act_sat_ratio"),
            "weight_sat_ratio": metrics.get("weight_sat_ratio"),
            "observed_range": obs, "clip_range": None if clip is None else list(clip),
            "act_sample_sqnr_db": _finite(current), "clip_alternatives":
                {k: _finite(v) for k, v in alt.items()},
            "histogram": _histogram(s["sample"], lo, hi),
            "kernel": None, "sensitivity": sens[n]})
    real = convert(qmodel, inplace=True)  # the fake-quant copy is not needed any more
    size = estimate_model_size(real)
    kernels = {r.name: r.kernel for r in lowbit_state(real).records if r.kernel}
    for layer in layers:
        layer["kernel"] = kernels.get(layer["name"])
    skipped = [{"name": r.name, "action": r.action, "reason": r.reason} for r in state.records
               if r.action != "quantized"]
    summary = {"float_bytes": size["float_bytes"], "quantized_bytes": size["quantized_bytes"],
               "compression": size["compression_ratio"], "kernels": kernels,
               "n_quantized": len(names), "not_quantized": skipped,
               "n_batches": len(batches)}
    result = Analysis(state.recipe.to_dict(), scorer.name, scorer.higher_is_better,
                      scorer.float_metric, quantized_metric, summary, layers,
                      advise(layers, sweep_scorer.name), times, hess_info, sweep=sweep_info)
    logger.info("analysed %d layer(s): %s %.4g -> %.4g", len(names), scorer.name,
                scorer.float_metric, quantized_metric)
    return result


def _spec_label(spec) -> str:
    g = spec.granularity
    kind = g.kind if not hasattr(g, "size") else f"{g.kind}{g.size}"
    return f"{spec.qtype.name} {spec.scheme.value} {kind}" + (" dyn" if spec.dynamic else
                                                              f" {spec.method}")
