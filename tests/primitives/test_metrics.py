"""Error metrics: each against its formula written out here in numpy, edge cases, errors."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.errors import InputError
from lowbit.primitives import metrics
from lowbit.primitives.affine import (block_reduce, choose_qparams, fake_quantize,
                                      qparams_from_range)
from lowbit.types import PerChannel, PerGroup, QParams, Scheme, int4, int8, uint8


def _pair(seed: int = 0, shape=(6, 10)):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g)
    b = a + 0.1 * torch.randn(shape, generator=g)
    return a, b


ALL_PAIRWISE = [metrics.mse, metrics.sqnr_db, metrics.snr_db, metrics.cosine,
                metrics.max_abs_error, metrics.mean_abs_error, metrics.relative_error_pct]


def test_metrics_match_their_formulas_in_numpy():
    a, b = _pair()
    na, nb = a.double().numpy(), b.double().numpy()
    d = na - nb
    expected = {
        "mse": np.mean(d ** 2),
        "sqnr_db": 10 * np.log10(np.sum(na ** 2) / np.sum(d ** 2)),
        "cosine": np.dot(na.ravel(), nb.ravel()) / np.linalg.norm(na) / np.linalg.norm(nb),
        "max_abs_error": np.max(np.abs(d)),
        "mean_abs_error": np.mean(np.abs(d)),
    }
    for name, want in expected.items():
        got = getattr(metrics, name)(a, b)
        assert isinstance(got, float), f"{name} must return a Python float, got {type(got)}"
        assert got == pytest.approx(float(want), rel=1e-12), f"{name}: {got} != formula {want}"


def test_sqnr_of_a_known_noise_and_the_snr_alias():
    ref = torch.ones(100)
    approx = ref + 0.125  # exact in float32: signal 100, noise 100 / 64 -> 10·log10(64) dB
    assert metrics.sqnr_db(ref, approx) == pytest.approx(10 * math.log10(64.0), abs=1e-12)
    assert metrics.snr_db is metrics.sqnr_db, "the seeds' snr_db is lowbit's sqnr_db"


def test_sqnr_is_plus_inf_when_exact_and_minus_inf_without_signal():
    x = torch.randn(5, generator=torch.Generator().manual_seed(1))
    assert metrics.sqnr_db(x, x.clone()) == math.inf, "no noise -> +inf"
    assert metrics.sqnr_db(torch.zeros(3), torch.zeros(3)) == math.inf, "zero == zero is exact"
    assert metrics.sqnr_db(torch.zeros(3), torch.ones(3)) == -math.inf, "noise without signal"


def test_cosine_directions_and_zero_vectors():
    v = torch.tensor([1.0, 2.0, -3.0])
    assert metrics.cosine(v, 5 * v) == pytest.approx(1.0, abs=1e-15)
    assert metrics.cosine(v, -v) == pytest.approx(-1.0, abs=1e-15)
    assert metrics.cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == 0.0
    assert metrics.cosine(torch.zeros(4), torch.zeros(4)) == 1.0, "two zero vectors are equal"
    assert metrics.cosine(torch.zeros(4), torch.ones(4)) == 0.0, "zero vs non-zero: no overlap"
    assert metrics.cosine(torch.ones(4), torch.zeros(4)) == 0.0


def test_abs_errors_on_a_hand_example():
    a = torch.tensor([1.0, -2.0, 3.0, 0.5])
    b = torch.tensor([1.5, -2.0, 2.0, 0.5])
    assert metrics.max_abs_error(a, b) == 1.0
    assert metrics.mean_abs_error(a, b) == pytest.approx((0.5 + 0 + 1.0 + 0) / 4)


def test_relative_error_ignores_values_below_the_significance_threshold():
    # max|ref| = 1000 -> significant means |ref| > 1: 0.5 and exactly 1.0 are ignored.
    ref = torch.tensor([1000.0, 0.5, 1.0, 2.0])
    approx = torch.tensor([1001.0, 0.0, 3.0, 2.2])
    assert metrics.SIGNIFICANT_FRACTION == 1e-3
    # errors: 0.1 %, (100 % ignored), (200 % ignored: |ref| == 1 is not > 1), 10 %
    assert metrics.relative_error_pct(ref, approx) == pytest.approx(10.0, rel=1e-6)


def test_relative_error_of_an_all_zero_reference():
    assert metrics.relative_error_pct(torch.zeros(3), torch.zeros(3)) == 0.0
    assert metrics.relative_error_pct(torch.zeros(3), torch.tensor([0.0, 1e-9, 0.0])) == math.inf


def test_metrics_accept_other_dtypes_and_compute_in_float64():
    a, b = _pair(2)
    assert metrics.mse(a.half(), b.half()) == pytest.approx(
        float(np.mean((a.half().double().numpy() - b.half().double().numpy()) ** 2)), rel=1e-12)
    ai = torch.tensor([1, 2, 3], dtype=torch.int8)
    assert metrics.max_abs_error(ai, torch.tensor([1, 2, -3], dtype=torch.int8)) == 6.0


def test_complex_metrics_use_the_complex_magnitude():
    a = torch.tensor([1 + 1j, 2 - 1j], dtype=torch.complex64)
    b = torch.tensor([1 + 0j, 2 - 1j], dtype=torch.complex64)
    assert metrics.mse(a, b) == pytest.approx(0.5), "mean |1j|^2 over 2 elements"
    assert metrics.max_abs_error(a, b) == pytest.approx(1.0)
    # signal |1+1j|^2 + |2-1j|^2 = 2 + 5 = 7, noise 1
    assert metrics.sqnr_db(a, b) == pytest.approx(10 * math.log10(7.0))
    ra, rb = torch.view_as_real(a).reshape(-1), torch.view_as_real(b).reshape(-1)
    assert metrics.cosine(a, b) == pytest.approx(metrics.cosine(ra, rb))


@pytest.mark.parametrize("fn", ALL_PAIRWISE, ids=lambda f: f.__name__)
def test_shape_mismatch_raises(fn):
    with pytest.raises(InputError, match=r"shape \(2, 3\).*shape \(3, 2\)"):
        fn(torch.zeros(2, 3), torch.zeros(3, 2))


@pytest.mark.parametrize("fn", ALL_PAIRWISE, ids=lambda f: f.__name__)
def test_empty_and_non_tensor_inputs_raise(fn):
    with pytest.raises(InputError, match="is empty"):
        fn(torch.zeros(0), torch.zeros(0))
    with pytest.raises(InputError, match="must be a torch.Tensor, got list"):
        fn([1.0], torch.zeros(1))


# ----------------------------------------------------------------------------- sat_ratio


def test_sat_ratio_with_explicit_bounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0, 5.0])
    assert metrics.sat_ratio(x, (-1.0, 2.0)) == pytest.approx(2 / 6), "-3 and 5 are outside"
    assert metrics.sat_ratio(x, (-10.0, 10.0)) == 0.0
    # per-row bounds broadcast against a (2, 3) tensor
    x2 = torch.tensor([[0.0, 1.0, 2.0], [0.0, 10.0, 20.0]])
    lo = torch.tensor([[0.0], [0.0]])
    hi = torch.tensor([[1.5], [15.0]])
    assert metrics.sat_ratio(x2, (lo, hi)) == pytest.approx(2 / 6)


@pytest.mark.parametrize("qtype,scheme,gran", [
    (int8, Scheme.SYMMETRIC, None),
    (int4, Scheme.AFFINE, PerChannel(0)),
    (uint8, Scheme.AFFINE, PerGroup(4, -1)),
    (int4, Scheme.SYMMETRIC, PerGroup(2, 0)),
])
def test_sat_ratio_of_qparams_is_the_fraction_with_a_zero_straight_through_gradient(
        qtype, scheme, gran):
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    fitted = choose_qparams(x, qtype, scheme, gran)
    assert metrics.sat_ratio(x, fitted) == 0.0, "qparams fitted on x by min/max clip nothing"
    # Shrink the range to 40 %: some values now clip; fake_quantize's STE marks exactly those.
    block = fitted.block_size
    narrow = qparams_from_range(
        block_reduce(x, block, "amin") * 0.4, block_reduce(x, block, "amax") * 0.4,
        qtype, scheme, block)
    xr = x.clone().requires_grad_()
    fake_quantize(xr, narrow).sum().backward()
    clipped = float((xr.grad == 0).double().mean())
    assert clipped > 0, "the narrow range must clip something for this test to mean anything"
    assert metrics.sat_ratio(x, narrow) == clipped


def test_sat_ratio_accepts_scalar_qparams_and_0d_tensors():
    qp = QParams(torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), int4, ())
    # int4 on step 0.5 represents [-4, 3.5]; codes round(x * 2): 3.74 -> 7 ok, 3.76 -> 8 clipped
    assert metrics.sat_ratio(torch.tensor(3.74), qp) == 0.0
    assert metrics.sat_ratio(torch.tensor(3.76), qp) == 1.0
    x = torch.tensor([[-4.3, 0.0], [3.76, 1.0]])
    assert metrics.sat_ratio(x, qp) == pytest.approx(0.5), "one scale for a 2-d tensor"


def test_sat_ratio_errors():
    x = torch.zeros(4, 6)
    with pytest.raises(InputError, match="QParams or a pair"):
        metrics.sat_ratio(x, 3.0)
    with pytest.raises(InputError, match="do not broadcast"):
        metrics.sat_ratio(x, (torch.zeros(5), 1.0))
    with pytest.raises(InputError, match="would enlarge x"):
        metrics.sat_ratio(x, (torch.zeros(2, 4, 6), 1.0))
    with pytest.raises(InputError, match="complex"):
        metrics.sat_ratio(torch.zeros(2, dtype=torch.complex64), (0.0, 1.0))
    per_row = choose_qparams(torch.randn(3, 6), int8, Scheme.SYMMETRIC, PerChannel(0))
    with pytest.raises(InputError, match="do not fit a tensor of shape"):
        metrics.sat_ratio(x, per_row)
    with pytest.raises(InputError, match="is empty"):
        metrics.sat_ratio(torch.zeros(0), (0.0, 1.0))


def test_metrics_module_imports_only_torch_and_errors():
    """metrics is layer L0 so that records and reports can use it: torch and errors only."""
    tree = ast.parse(Path(metrics.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "math", "typing", "torch", "..errors"}, imported
