"""Fixtures shared by the whole test suite."""

import os
import tempfile

import pytest


def pytest_configure(config):
    """Kernel tuning decisions go to a cache of this test session, not the user's."""
    os.environ["LOWBIT_CACHE"] = tempfile.mkdtemp(prefix="lowbit-test-cache-")


def _skip_unless_available(make):
    """``make()`` (builds something on a forced kernel path), or a skip naming why this
    machine has no such kernel: whether an integer kernel runs here is the library's finding
    (its probe and formats), never a number this test assumes."""
    from lowbit.errors import KernelUnavailableError
    try:
        return make()
    except KernelUnavailableError as exc:
        assert "Fix:" in str(exc)
        pytest.skip(f"no kernel for this forced path on this machine: {str(exc)[:300]}")


@pytest.fixture
def skip_unless_available():
    """The helper above, for tests that force a kernel path."""
    return _skip_unless_available


@pytest.fixture
def fake_timer(monkeypatch, tmp_path):
    """``fake_timer(seconds)`` makes the kernel tuner read ``seconds(impl_name, rows)`` as each
    candidate's time (in a fresh cache), so which kernel wins is the test's choice, not this
    machine's CPU's."""
    from lowbit.kernels import tuning
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "tuning-cache"))
    monkeypatch.delenv("LOWBIT_KERNEL_TUNING", raising=False)

    def install(seconds):
        def time_candidate(run, give_up_after=None):
            # the tuner's timed lambda closes over the candidate ``impl`` and the rows ``x``
            cells = dict(zip(run.__code__.co_freevars,
                             (c.cell_contents for c in run.__closure__)))
            return seconds(cells["impl"].name, cells["x"].shape[0])
        monkeypatch.setattr(tuning, "time_candidate", time_candidate)
    return install


@pytest.fixture
def single_thread():
    """Run a test on one CPU thread and restore the setting afterwards.

    Tiny tensors and training loops are faster on one thread than on several fighting over
    a busy machine's cores, and their results then do not depend on the core count."""
    from lowbit.runtime import one_thread
    with one_thread():
        yield


@pytest.fixture(scope="session")
def trained_digits():
    """The digits CNN with the committed trained weights, its data split and float accuracy.

    Training depends on the CPU's instruction set, so tests that need a trained model load
    ``tests/fixtures/digits_cnn_seed0.safetensors`` (written by ``make_digits_cnn.py`` beside
    it) instead of training: their numbers then depend only on inference."""
    pytest.importorskip("sklearn", reason="the digits example needs scikit-learn")
    from pathlib import Path

    from safetensors.torch import load_file

    from lowbit.zoo.digits import DigitsCNN, accuracy, load_digits_split

    path = Path(__file__).parent / "fixtures" / "digits_cnn_seed0.safetensors"
    model = DigitsCNN()
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()
    data = load_digits_split(seed=0)
    return model, data, accuracy(model, data.x_test, data.y_test)


@pytest.fixture(scope="session")
def trained_mobilenet_digits():
    """The MobileNet-style digits CNN with the weights shipped in ``lowbit/zoo`` (written by
    ``benchmarks/train_mobilenet_digits.py``) and its fixed data split; nothing is trained."""
    pytest.importorskip("sklearn", reason="the digits examples need scikit-learn")
    from lowbit.zoo.mobilenet_digits import load_mobilenet_digits, load_trained_mobilenet_digits

    return load_trained_mobilenet_digits(), load_mobilenet_digits()
