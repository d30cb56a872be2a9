"""Export a quantized model to ONNX (QuantizeLinear/DequantizeLinear), optionally validated.

``lowbit export --model SPEC (--ckpt DIR | --recipe NAME) --out FILE.onnx [--opset N]
[--no_dynamic_batch] [--validate]`` loads the checkpoint (or quantizes the example with the
recipe and converts it), exports it with ``lowbit.export.export_onnx`` on the example's first
calibration batch and prints ``onnx_info``'s summary (inputs, outputs, parameters, Q/DQ
counts, opset). With ``--validate`` the file is run in ONNX Runtime against the PyTorch model
(``validate_onnx``), on a batch of about half the size when the batch dimension is dynamic.
Writes FILE.onnx and FILE.json (export result, full info, validation).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lowbit.cli.flags import FlagError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="the float model SPEC: digits, minilm, hf:PATH or module:function")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", default=None, help="checkpoint directory from lowbit quantize")
    source.add_argument("--recipe", default=None,
                        help="quantize the model with this preset or recipe file instead")
    parser.add_argument("--out", required=True, help="the .onnx file to write (FILE.json too)")
    parser.add_argument("--opset", type=int, default=None,
                        help="ONNX opset (default: the exporter's choice)")
    parser.add_argument("--no_dynamic_batch", action="store_true",
                        help="fix the batch dimension to the example batch's size")
    parser.add_argument("--validate", action="store_true",
                        help="run the file in ONNX Runtime and compare it with PyTorch")


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-ready data (dataclasses, objects with to_dict, mappings, sequences)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return _plain(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


#: onnx_info / validate_onnx keys printed on the terminal (everything goes to FILE.json)
INFO_KEYS = ("inputs", "outputs", "parameters", "quantize_linear", "dequantize_linear", "opset")
VALIDATION_KEYS = ("passed", "max_abs_error", "mean_cosine", "min_cosine", "min_cosine_required",
                   "atol")


def _value(value: Any) -> str:
    if isinstance(value, Mapping) and "name" in value:  # an input or output
        shape = value.get("shape")
        dims = "" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"
        return f"{value['name']}: {value.get('dtype', '')}{dims}"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def summary_lines(info: Mapping, keys: tuple[str, ...]) -> list[str]:
    """The ``keys`` of ``info`` that it has, one line each (a list one item a line)."""
    lines = []
    for key in keys:
        if key not in info:
            continue
        value = info[key]
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines += [f"  {_value(item)}" for item in value]
        else:
            lines.append(f"{key}: {_value(value)}")
    return lines


def smaller_batch(batch: Any) -> Any:
    """``batch`` cut to about half its batch size (dim 0 of its first tensor), for checking a
    dynamic batch dimension; a batch of one is returned as it is."""
    import torch

    tensors = ([batch] if isinstance(batch, torch.Tensor) else list(batch.values())
               if isinstance(batch, Mapping) else list(batch))
    sizes = [t.shape[0] for t in tensors if isinstance(t, torch.Tensor) and t.dim()]
    if not sizes or sizes[0] < 2:
        return batch
    n, keep = sizes[0], max(1, sizes[0] // 2)

    def cut(t):
        return t[:keep] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n else t

    if isinstance(batch, torch.Tensor):
        return cut(batch)
    if isinstance(batch, Mapping):
        return {k: cut(v) for k, v in batch.items()}
    return type(batch)(cut(t) for t in batch)


def run(args: argparse.Namespace) -> int:
    """Export a quantized model to ONNX (QDQ) and optionally validate it in ONNX Runtime."""
    from lowbit.cli.examples import load_example
    from lowbit.cli.runner import load_or_quantize, write_json
    from lowbit.errors import ExportError, LowbitError

    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise FlagError("--out", args.out, "a file name ending in .onnx",
                        fix=f"e.g. --out {out.with_suffix('.onnx')}")
    if args.opset is not None and args.opset < 1:
        raise FlagError("--opset", args.opset, "a positive ONNX opset number", fix="e.g. --opset 21")
    try:
        from lowbit.export import export_onnx, onnx_info, validate_onnx
    except ImportError as exc:
        raise ExportError(f"ONNX export is unavailable ({exc}); install the onnx extra: "
                          "pip install 'lowbit[onnx]'") from None

    example = load_example(args.model)
    model = load_or_quantize(example, args.ckpt, args.recipe)
    inputs = example.calib_data[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    exported = export_onnx(model, inputs, out, opset=args.opset,
                           dynamic_batch=not args.no_dynamic_batch)
    info = onnx_info(out)
    report = {"model": args.model, "source": {"ckpt": args.ckpt, "recipe": args.recipe},
              "onnx": str(out), "export": _plain(exported), "info": _plain(info),
              "validation": None}
    print(f"exported {out} (exporter {getattr(exported, 'exporter', '?')}, "
          f"opset {getattr(exported, 'opset', args.opset)})")
    for fallback in getattr(exported, "fallbacks", ()):
        print(f"  fell back: {fallback}")
    print("\n".join(summary_lines(info, INFO_KEYS)))
    json_path = out.with_suffix(".json")
    if args.validate:
        check = inputs if args.no_dynamic_batch else smaller_batch(inputs)
        try:
            validation = validate_onnx(out, model, check)
        except LowbitError as exc:
            report["validation"] = {"passed": False, "error": str(exc)}
            write_json(json_path, report)
            raise
        report["validation"] = _plain(validation)
        print("\nvalidation (ONNX Runtime vs PyTorch):")
        print("\n".join(summary_lines(validation, VALIDATION_KEYS)))
    write_json(json_path, report)
    print(f"wrote {out} and {json_path}")
    return 0
