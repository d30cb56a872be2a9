"""Train the Birman–Schwinger character LM on pydoc help text and save its float weights.

The model is :class:`lowbit.zoo.birman_schwinger_lm.BirmanSchwingerLM` (default size); the
text is ``pydoc_data.topics`` (last 10 % held out, never trained on). Training is AdamW over
``--steps`` batches of ``--batch`` random 128-character windows (seed 0), two threads, a few
minutes on two CPU cores. The weights are written as float16 safetensors (so the fixture stays
small; every measurement starts from these rounded weights, loaded back as float32) with a JSON
file holding the architecture, the training settings and the held-out perplexity.

    python benchmarks/train_bs_lm.py [--steps 400] [--batch 16] [--out tests/fixtures/bs_lm]

Training results differ across CPUs (instruction sets change float rounding), which is why the
trained weights are committed: tests and benchmarks load them instead of retraining.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lowbit.zoo.birman_schwinger_lm import (BirmanSchwingerLM, lm_windows, perplexity,
                                            text_splits, train_lm)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "bs_lm"
logger = logging.getLogger("train_bs_lm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)

    train_ids, test_ids = text_splits()
    model = BirmanSchwingerLM(seed=0)
    batches = lm_windows(train_ids, model.n_seq, batch=args.batch, n_batches=args.steps, seed=0)
    start = time.perf_counter()

    def log(step: int, loss: float) -> None:
        if step % 50 == 0 or step == args.steps - 1:
            logger.info("step %d loss %.3f (%.0f s)", step, loss, time.perf_counter() - start)

    train_lm(model, batches, lr=args.lr, on_step=log)
    seconds = time.perf_counter() - start
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state.items()})  # measure what is saved
    ppl = perplexity(model, lm_windows(test_ids, model.n_seq, batch=32))
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(args.out / "weights.safetensors"))
    info = {"arch": model.arch, "seed": 0, "steps": args.steps, "batch": args.batch,
            "lr": args.lr, "train_seconds": round(seconds, 1), "held_out_perplexity": ppl,
            "text": "pydoc_data.topics, sorted topics joined by newlines, last 10% held out",
            "torch": torch.__version__, "dtype": "float16 on disk, float32 in use"}
    (args.out / "config.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("held-out perplexity %.3f after %.0f s; wrote %s", ppl, seconds, args.out)


if __name__ == "__main__":
    main()
