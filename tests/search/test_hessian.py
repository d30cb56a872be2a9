"""Hutchinson traces: each probe's term equals v_l^T (H v)_l with the exact Hessian, both
methods agree, and the quadratic estimate is exact for a quadratic loss."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lowbit.errors import ConfigError
from lowbit.search.hessian import hutchinson_traces, predicted_loss


def tiny(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(dtype)


def ce_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def exact_hessian(model, names, batch):
    """The full Hessian of ce_loss over the named weights, flattened in order."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def f(flat):
        chunks = torch.split(flat, sizes)
        override = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return ce_loss(lambda x: functional_call(model, {**params, **override}, (x,)), batch)

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(f, flat), sizes


def expected_terms(model, names, batches, n_probes, seed):
    """Replay the estimator's probes against the exact Hessian."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    out = []
    for batch in batches:
        hess, sizes = exact_hessian(model, names, batch)
        for _ in range(n_probes):
            v = [(torch.randint(0, 2, params[n].shape, generator=gen) * 2 - 1).double()
                 for n in names]
            hv = torch.split(hess @ torch.cat([x.reshape(-1) for x in v]), sizes)
            out.append([float(x.reshape(-1) @ h) for x, h in zip(v, hv)])
    return torch.tensor(out, dtype=torch.float64).mean(0)


@pytest.mark.parametrize("method", ["autograd", "finite_difference"])
def test_trace_terms_match_the_exact_hessian(method):
    model = tiny()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(5, 4, generator=gen, dtype=torch.float64),
                torch.randint(0, 2, (5,), generator=gen)) for _ in range(2)]
    names = ["0.weight", "2.weight"]
    weights = {"0": model[0].weight, "2": model[2].weight}
    before = [p.detach().clone() for p in model.parameters()]
    est = hutchinson_traces(model, weights, batches, loss_fn=ce_loss, n_probes=3, seed=5,
                            method=method)
    expected = expected_terms(model, names, batches, 3, 5)
    rel = 1e-9 if method == "autograd" else 1e-4  # central differences: O(eps^2) error
    assert est.trace["0"] == pytest.approx(float(expected[0]), rel=rel, abs=1e-9)
    assert est.trace["2"] == pytest.approx(float(expected[1]), rel=rel, abs=1e-9)
    assert est.method == method and est.numel == {"0": 12, "2": 6}
    for p, b in zip(model.parameters(), before):  # weights restored exactly (FD adds/removes)
        assert torch.allclose(p, b, rtol=0, atol=1e-12)
        assert p.requires_grad


def test_default_loss_is_output_mse_to_float_and_converges_to_the_trace():
    """For y = W x, the MSE to the float output has tr(H) = 2 sum ||x_b||^2 / B exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, bias=False)).double()
    x = torch.randn(8, 6, dtype=torch.float64)
    est = hutchinson_traces(model, {"0": model[0].weight}, [x], n_probes=400)
    exact = 2.0 * float(x.pow(2).sum()) / x.shape[0] / 1  # mean over B*O, summed over O rows
    assert abs(est.trace["0"] - exact) < 5 * est.stderr["0"]


def test_quadratic_estimate_is_exact_for_a_quadratic_loss():
    model = nn.Sequential(nn.Linear(3, 3))
    w0 = model[0].weight.detach().clone()
    loss_fn = lambda m, b: ((m[0].weight - w0) ** 2).sum()  # noqa: E731  Hessian 2 I
    est = hutchinson_traces(model, {"0": model[0].weight}, [None], loss_fn=loss_fn, n_probes=2)
    assert est.trace["0"] == pytest.approx(18.0)
    delta = torch.randn(3, 3)
    assert predicted_loss(est.trace["0"], 9, delta) == pytest.approx(float((delta ** 2).sum()))


def test_bad_arguments_are_rejected():
    model = tiny()
    with pytest.raises(ConfigError, match="method"):
        hutchinson_traces(model, {"0": model[0].weight}, [None], method="exact")
    with pytest.raises(ConfigError, match="n_probes"):
        hutchinson_traces(model, {"0": model[0].weight}, [None], n_probes=0)
    with pytest.raises(ConfigError, match="weights"):
        hutchinson_traces(model, {}, [None])


@pytest.mark.parametrize("method", ["autograd", "finite_difference"])
def test_a_weight_the_loss_never_reaches_has_zero_trace(method):
    model = tiny()
    unused = nn.Linear(3, 3).double()  # not part of the forward
    batches = [(torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 2, (5,)))]
    est = hutchinson_traces(model, {"0": model[0].weight, "unused": unused.weight}, batches,
                            loss_fn=ce_loss, n_probes=2, method=method)
    assert est.trace["unused"] == 0.0 and est.trace["0"] != 0.0


def test_auto_falls_back_with_the_same_probes_as_finite_differences(monkeypatch):
    """A model whose operators have no double backward: autograd fails after drawing a
    probe; finite differences then use exactly the probes a forced run would draw."""
    import lowbit.search.hessian as hessian

    def no_double_backward(loss_fn, params, probes, n_probes):
        next(iter(probes))  # a probe was drawn before the failure
        raise RuntimeError("derivative for this op is not implemented")

    monkeypatch.setattr(hessian, "_hvp_autograd", no_double_backward)
    model = tiny()
    batches = [(torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,)))
               for _ in range(2)]
    weights = {n: model.get_submodule(n).weight for n in ("0", "2")}
    auto = hutchinson_traces(model, weights, batches, loss_fn=ce_loss, n_probes=3, method="auto")
    fd = hutchinson_traces(model, weights, batches, loss_fn=ce_loss, n_probes=3,
                           method="finite_difference")
    assert auto.method == "finite_difference" and auto.trace == fd.trace
