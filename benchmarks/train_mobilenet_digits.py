"""Train the MobileNet-style digits CNN and write its float weights into the package.

The model is :class:`lowbit.zoo.mobilenet_digits.MobileNetDigits`, trained by
:func:`~lowbit.zoo.mobilenet_digits.train_mobilenet_digits` (seed 0, 12 epochs, AdamW with a
one-cycle learning rate peaking at 0.05, fresh augmentation each epoch) on the 1197 training
images of :func:`~lowbit.zoo.mobilenet_digits.load_mobilenet_digits`; two torch threads, about
a minute of CPU time.  Writes ``src/lowbit/zoo/mobilenet_digits.safetensors`` (float32) and
``benchmarks/results/mobilenet_digits_train.json`` (settings, accuracies, CPU, load, times).

    python benchmarks/train_mobilenet_digits.py [--epochs 12] [--lr 0.05] [--out PATH]

Training results differ across CPUs (instruction sets change float rounding), which is why the
trained weights are committed: tests and benchmarks load them instead of retraining.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lowbit.zoo.digits import accuracy
from lowbit.zoo.mobilenet_digits import (WEIGHTS_FILE, load_mobilenet_digits,
                                         load_trained_mobilenet_digits, train_mobilenet_digits)

from _machine import cpu  # noqa: E402  (benchmarks/ is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results"




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    machine = cpu()
    data = load_mobilenet_digits()
    wall, cpu_time = time.perf_counter(), time.process_time()
    model = train_mobilenet_digits(data, seed=0, epochs=args.epochs, lr=args.lr, progress=True)
    wall, cpu_time = time.perf_counter() - wall, time.process_time() - cpu_time
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out), metadata={"seed": "0", "epochs": str(args.epochs),
                                              "lr": str(args.lr)})
    model = load_trained_mobilenet_digits(args.out)  # measure what was saved
    info = {"seed": 0, "epochs": args.epochs, "lr": args.lr, "torch": torch.__version__,
            "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu_time, 1),
            "loadavg_at_end": os.getloadavg()[0], "cpu": machine,
            "n_train": len(data.y_train), "n_calib": len(data.y_calib),
            "n_test": len(data.y_test),
            "float_test_accuracy": accuracy(model, data.x_test, data.y_test),
            "float_calib_accuracy": accuracy(model, data.x_calib, data.y_calib),
            "weights": str(args.out.name)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mobilenet_digits_train.json").write_text(json.dumps(info, indent=2) + "\n")
    logging.info("float test accuracy %.2f %% after %.0f s (%.0f s CPU); wrote %s",
                 info["float_test_accuracy"], wall, cpu_time, args.out)


if __name__ == "__main__":
    main()
