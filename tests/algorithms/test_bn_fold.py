"""BatchNorm folding: exact in float, found from the executed graph, refusals recorded."""

import pytest
import torch
from torch import nn

from lowbit.algorithms import ALGORITHMS, BNFold, fold_batchnorm, make_algorithm
from lowbit.algorithms.bn_fold import bn_scale_shift, fold_bn_into
from lowbit.errors import ConfigError

from .toy_cnn import ToyCNN, images


def _rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_fold_bn_into_matches_the_batchnorm_formula():
    conv, bn = nn.Conv2d(2, 3, 3, bias=True), nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([0.01, 4.0, 1.0]))
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    bn.eval()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    conv, bn = conv.double(), bn.double()
    expected = bn(conv(x))
    fold_bn_into(conv, bn)
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)
    s, t = bn_scale_shift(bn)
    torch.testing.assert_close(s, bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps))


def test_every_pair_folds_and_the_float_output_is_unchanged():
    model = ToyCNN()
    x = images(1, 16)[0]
    reference = model(x).detach()
    results = fold_batchnorm(model, x)
    assert [(r.bn, r.layer, r.folded) for r in results] == [
        ("bn", "conv", True), ("dw_bn", "dw", True), ("pw_bn", "pw", True),
        ("fc_bn", "fc", True)]
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules())
    assert model.conv.bias is not None, "a bias is created for a conv that had none"
    assert _rel(model(x), reference) <= 1e-5


class _Residual(nn.Module):
    """conv's output is read by the BN and by the residual add: BN must stay."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y + self.bn2(self.conv2(x))


class _Reordered(nn.Module):
    """Registered in the opposite order to the one the forward runs."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(2, 4, 1)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_a_bn_whose_producer_has_two_consumers_is_kept_with_the_reason():
    model = _Residual().eval()
    with torch.no_grad():
        model.bn.running_var.fill_(4.0)
    x = torch.randn(2, 4, 3, 3)
    reference = model(x)
    results = {r.bn: r for r in fold_batchnorm(model, x)}
    assert not results["bn"].folded and "2 consumers" in results["bn"].reason
    assert results["bn2"].folded
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.bn2, nn.Identity)
    assert _rel(model(x), reference) <= 1e-5


def test_a_train_mode_bn_is_kept_and_order_comes_from_the_graph():
    model = _Reordered()
    model.train()
    (result,) = fold_batchnorm(model)
    assert not result.folded and "train mode" in result.reason
    model.eval()
    (result,) = fold_batchnorm(model)
    assert result.folded and result.layer == "conv"


def test_the_algorithm_is_registered_and_writes_notes():
    assert ALGORITHMS["bn_fold"] is BNFold and BNFold.stage == "float"
    model = _Residual().eval()
    notes = make_algorithm("bn_fold").apply_float(model, [torch.randn(2, 4, 3, 3)])
    assert notes["conv2"] == {"bn_fold": "bn2"}
    assert notes["conv"]["bn_fold_kept"].startswith("bn: ")
    with pytest.raises(ConfigError, match="BNFold.tol"):
        BNFold(tol=-1)


def test_qat_keeps_working_on_a_folded_model():
    import lowbit

    model = ToyCNN()
    fold_batchnorm(model)
    data = images(2, 8)
    qmodel, _ = lowbit.quantize_model(model, "w8a8-static", data, convert=False)
    before = {n: p.detach().clone() for n, p in qmodel.named_parameters()}
    targets = [torch.zeros(8, 4) for _ in data]
    losses = lowbit.qat_finetune(qmodel, list(zip(data, targets)), nn.MSELoss(),
                                 lr=1e-2, epochs=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    changed = [n for n, p in qmodel.named_parameters() if not torch.equal(before[n], p)]
    assert "fc.weight" in changed and "fc.bias" in changed, "QAT must update folded layers"
    assert losses[-1] < losses[0]
