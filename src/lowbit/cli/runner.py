"""Quantize one example with one recipe, with a progress bar; shared by the subcommands."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lowbit.cli.examples import Example


@dataclass
class Outcome:
    """What :func:`quantize_example` made: the real and fake-quant models, records, score."""

    recipe: str
    model: Any
    fake_quant: Any
    records: list
    score: float
    size: dict
    calib_batches: int = 0


def quantize_example(example: Example, recipe: Any, *, fq_impl: str = "reference",
                     max_batches: int | None = None, label: str | None = None,
                     algorithms: Any = None) -> Outcome:
    """Prepare, calibrate (progress bar on stderr), convert and score ``example``.

    ``recipe``: a preset name, recipe file or :class:`lowbit.recipe.Recipe`.
    ``max_batches``: calibrate on at most this many of the example's batches (None: all);
    0 skips calibration, which works only when no range needs data (weights are observed
    directly; dynamic and fixed-point activations need none) and raises
    :class:`lowbit.cli.flags.FlagError` otherwise.
    ``algorithms``: layer-wise algorithms (names or objects, e.g. ``["gptq"]``) run block by
    block after calibration, with a progress bar per block.
    Under torch.distributed each rank calibrates on its share of the batches
    (:func:`lowbit.distributed.shard_batches`); bars and the score are rank 0's.
    """
    from lowbit.distributed import is_distributed, is_main, shard_batches
    from lowbit.model import convert, estimate_model_size, quantize_model
    from lowbit.recipe import load_recipe

    recipe = load_recipe(recipe)
    name = label or recipe.name
    data = example.calib_data if max_batches is None else example.calib_data[:max_batches]
    mine = shard_batches(data) if is_distributed() and data else data  # this rank's share
    if algorithms:
        import lowbit

        fake, records = lowbit.quantize_model(example.model, recipe, mine, fq_impl=fq_impl,
                                              convert=False, algorithms=algorithms,
                                              progress=True)
        real = convert(fake)
        return Outcome(name, real, fake, records, _score(example, real),
                       estimate_model_size(real), len(data))
    if max_batches == 0:
        fake, records = _without_calibration(example, recipe, fq_impl)
    else:
        with tqdm(total=len(mine), desc=f"calibrate {name}", unit="batch", file=sys.stderr,
                  leave=False, disable=None if is_main() else True) as bar:
            fake, records = quantize_model(example.model, recipe, mine, fq_impl=fq_impl,
                                           convert=False, progress=lambda n: bar.update(1))
    real = convert(fake)
    return Outcome(name, real, fake, records, _score(example, real), estimate_model_size(real),
                   len(data))


def _score(example: Example, model: Any) -> float:
    """The example's score of ``model``; computed by rank 0 only under torch.distributed
    (the others get NaN: they write nothing)."""
    from lowbit.distributed import is_main

    return example.score(model) if is_main() else math.nan


def load_or_quantize(example: Example, ckpt: str | None, recipe: Any) -> Any:
    """The model of checkpoint ``ckpt`` (loaded into a copy of the example's float model),
    or, without one, the example quantized with ``recipe`` and converted."""
    if ckpt is not None:
        import copy

        import lowbit.model.checkpoint as checkpoint

        return checkpoint.load(ckpt, copy.deepcopy(example.model))
    return quantize_example(example, recipe).model


def _without_calibration(example: Example, recipe: Any, fq_impl: str):
    """Prepare ``example.model`` and freeze its ranges without running any batch."""
    from lowbit.cli.flags import FlagError
    from lowbit.model import calibrate, lowbit_state, prepare, quant_modules

    first = example.calib_data[0] if example.calib_data else None
    fake = prepare(example.model, recipe, example_inputs=first, fq_impl=fq_impl)
    needs_data = [name for name, module in quant_modules(fake)
                  if module.act_quantizer is not None and not module.act_quantizer.ready]
    if needs_data:
        more = f" and {len(needs_data) - 3} more" if len(needs_data) > 3 else ""
        raise FlagError("--quant_calib_batches", 0,
                        f"at least 1 for recipe {recipe.name!r}, whose activation ranges at "
                        f"{', '.join(needs_data[:3])}{more} come from calibration data",
                        fix="pass e.g. --quant_calib_batches 8, or use a recipe whose "
                            "activations need no data (w8a8, w8a16, int16-fixed88, "
                            "--quant_mode fixed88)")
    with calibrate(fake):  # no batch: weights are observed directly, then all ranges frozen
        pass
    return fake, lowbit_state(fake).records


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented, valid JSON to ``path``, creating its folder: NaN and
    infinities (which JSON cannot hold) are written as ``null``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(data), indent=2, default=str, allow_nan=False)
    path.write_text(text + "\n")


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data
