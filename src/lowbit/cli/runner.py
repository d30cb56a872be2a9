"""Quantize one example with one recipe, with a progress bar; shared by the subcommands."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lowbit.cli.examples import Example


@dataclass
class Outcome:
    recipe: str
    model: Any
    fake_quant: Any
    records: list
    score: float
    size: dict


def quantize_example(example: Example, recipe: Any, *, backend: str = "reference",
                     max_batches: int | None = None, label: str | None = None) -> Outcome:
    """Prepare, calibrate (progress bar on stderr), convert and score ``example``."""
    from lowbit.model import convert, estimate_model_size, quantize_model

    total = len(example.calib_data) if max_batches is None else min(max_batches,
                                                                    len(example.calib_data))
    name = label or getattr(recipe, "name", str(recipe))
    with tqdm(total=total, desc=f"calibrate {name}", unit="batch", file=sys.stderr,
              leave=False, disable=None) as bar:
        fake, records = quantize_model(example.model, recipe, example.calib_data,
                                       max_batches=max_batches, backend=backend, convert=False,
                                       progress=lambda n: bar.update(1))
    real = convert(fake)
    return Outcome(name, real, fake, records, example.score(real), estimate_model_size(real))


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
