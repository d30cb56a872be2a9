"""Fixtures shared by the whole test suite."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """Run a test on one CPU thread and restore the setting afterwards.

    Tiny tensors and training loops are faster on one thread than on several fighting over
    a busy machine's cores, and their results then do not depend on the core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
