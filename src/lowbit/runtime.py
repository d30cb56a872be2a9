"""Temporary changes of global or module state, undone on exit (torch only)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run on one CPU thread, restoring the thread count afterwards (tiny ops and sequential
    loops are fastest so on a busy machine, and their results do not depend on the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, back in its own mode afterwards."""
    training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(training)
