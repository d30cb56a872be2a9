"""lowbit.zoo.birman_schwinger: the complex-output example core of seed 002."""

from __future__ import annotations

import cmath
import math

import pytest
import torch

from lowbit.errors import ConfigError, InputError
from lowbit.zoo.birman_schwinger import (BirmanSchwingerCore, free_resolvent_kernel,
                                         potential_batches)

N = 16


def test_output_is_complex_with_the_input_shape():
    core = BirmanSchwingerCore(n_seq=N)
    v = potential_batches(1, batch=3, n_seq=N)[0]
    g = core(v)
    assert g.dtype == torch.complex64 and g.shape == (3, N)
    assert g.imag.abs().max() > 0, "the resolvent makes the output genuinely complex"


def test_kernel_is_the_outgoing_free_resolvent():
    epsilon = 0.5
    kernel = free_resolvent_kernel(N, epsilon)
    k = cmath.sqrt(1 + 1j * epsilon)
    assert k.imag > 0
    for i, j in [(0, 0), (0, 1), (3, 7), (N - 1, 0)]:
        expected = 1j / (2 * k) * cmath.exp(1j * k * abs(i - j))
        assert abs(complex(kernel[i, j]) - expected) < 1e-6, (i, j)
    assert torch.equal(kernel, kernel.T), "depends on |i - j| only"
    ratio = kernel[0].abs() / kernel[0, 0].abs()  # decays like exp(-Im k |i - j|)
    torch.testing.assert_close(ratio, torch.exp(-k.imag * torch.arange(N, dtype=torch.float32)))
    assert ratio[-1] < 0.05


def test_forward_equals_the_operator_written_as_matrices():
    core = BirmanSchwingerCore(n_seq=N, epsilon=1.0, seed=3)
    v = potential_batches(1, batch=2, n_seq=N, seed=1)[0]
    resolvent = free_resolvent_kernel(N, 1.0).to(torch.complex128)
    w_in, b_in = core.proj.weight.double(), core.proj.bias.double()
    w_out = core.out.weight.double().to(torch.complex128)  # real map acting on Re and Im
    c128 = torch.complex128
    for row in v.double():
        root = row.abs().sqrt()
        # K(z) = |V|^1/2 R0 V^1/2 as an (N, N) matrix
        operator = torch.diag(root).to(c128) @ resolvent @ torch.diag(torch.sign(row) * root).to(c128)
        u = (w_in @ row + b_in).to(c128)
        expected = w_out @ (operator @ u)
        got = core(row[None].float())[0].to(c128)
        # float32 forward vs float64 reference: tolerance set by float32 rounding on N=16 sums
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_same_seed_same_core_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b, c = (BirmanSchwingerCore(N, seed=7), BirmanSchwingerCore(N, seed=7),
               BirmanSchwingerCore(N, seed=8))
    assert torch.equal(torch.random.get_rng_state(), state), "construction uses a private generator"
    v = potential_batches(1, batch=4, n_seq=N)[0]
    assert torch.equal(a(v), b(v))
    assert not torch.equal(a(v), c(v)), "the seed must matter"


def test_state_dict_round_trip_and_kernel_not_saved():
    source, target = BirmanSchwingerCore(N, seed=1), BirmanSchwingerCore(N, seed=2)
    assert set(source.state_dict()) == {"proj.weight", "proj.bias", "out.weight"}
    target.load_state_dict(source.state_dict())
    v = potential_batches(1, batch=2, n_seq=N)[0]
    assert torch.equal(source(v), target(v))


def test_gradients_are_finite_even_where_the_potential_is_zero():
    core = BirmanSchwingerCore(N)
    v = potential_batches(1, batch=2, n_seq=N)[0]
    v[0, :4] = 0.0
    v.requires_grad_(True)
    core(v).abs().sum().backward()
    for grad in (v.grad, core.proj.weight.grad, core.out.weight.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_potential_batches_are_smooth_deterministic_and_signed():
    batches = potential_batches(n_batches=3, batch=4, n_seq=32, seed=2)
    assert len(batches) == 3 and all(b.shape == (4, 32) and b.dtype == torch.float32
                                     for b in batches)
    again = potential_batches(n_batches=3, batch=4, n_seq=32, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    assert not torch.equal(batches[0], potential_batches(1, 4, 32, seed=3)[0])
    v = torch.cat(batches)
    assert (v > 0).any() and (v < 0).any()
    neighbours = torch.corrcoef(torch.stack([v[:, :-1].flatten(), v[:, 1:].flatten()]))[0, 1]
    assert neighbours > 0.5, f"smoothed noise is correlated between neighbours ({neighbours:.2f})"


@pytest.mark.parametrize("kwargs, match", [
    ({"n_seq": 0}, r"n_seq=0 .*an integer in \[1, 16384\]"),
    ({"epsilon": 0.0}, r"epsilon=0.0 .*a finite number > 0"),
    ({"epsilon": -1}, r"epsilon=-1 .*a finite number > 0"),
    ({"epsilon": math.nan}, r"epsilon=nan .*a finite number > 0"),
    ({"epsilon": True}, r"epsilon=True .*a finite number > 0"),
    ({"seed": -1}, r"seed=-1 "),
    ({"causal": 1}, r"causal=1 .*True or False"),
])
def test_core_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BirmanSchwingerCore(**kwargs)


@pytest.mark.parametrize("v", [
    torch.zeros(2, N + 1), torch.zeros(N), torch.zeros(2, N, dtype=torch.complex64),
    torch.zeros(2, N, dtype=torch.int64),
])
def test_forward_rejects_inputs_that_are_not_real_batches_of_n_seq(v):
    with pytest.raises(InputError, match=rf"real floating tensor of shape \(B, {N}\)"):
        BirmanSchwingerCore(N)(v)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_batches": 0}, r"n_batches=0"), ({"batch": 0}, r"batch=0"),
    ({"n_seq": -2}, r"n_seq=-2"), ({"seed": 1.5}, r"seed=1.5"),
])
def test_potential_batches_reject_bad_sizes(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        potential_batches(**kwargs)


def test_causal_core_sees_only_the_past():
    core = BirmanSchwingerCore(N, seed=2, causal=True)
    assert torch.equal(core.kernel, torch.tril(free_resolvent_kernel(N, 1.0)))
    assert torch.count_nonzero(torch.triu(core.proj.weight, 1)) == 0
    v = potential_batches(1, batch=2, n_seq=N)[0]
    changed = v.clone()
    changed[:, 9:] -= 3.0
    a, b = core(v), core(changed)
    assert torch.equal(a[:, :9], b[:, :9]) and not torch.equal(a[:, 9:], b[:, 9:])
    assert core.g_point(a) is a, "g_point is the identity in float"


def test_enforce_causal_zeroes_the_upper_triangles_only_when_causal():
    causal, full = BirmanSchwingerCore(N, causal=True), BirmanSchwingerCore(N)
    for core in (causal, full):
        with torch.no_grad():
            core.out.weight.add_(1.0)
        core.enforce_causal_()
    assert torch.count_nonzero(torch.triu(causal.out.weight, 1)) == 0
    assert torch.equal(torch.tril(causal.out.weight), torch.tril(full.out.weight))
    assert torch.count_nonzero(torch.triu(full.out.weight, 1)) > 0
    assert "causal=True" in repr(causal)
