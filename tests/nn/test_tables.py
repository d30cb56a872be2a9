"""The float -> QAT -> real tables: entries, exact-type look-up, registration and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.nn import tables
from lowbit.nn.qat import QuantLinear
from lowbit.nn.quantized import QuantizedLinear
from lowbit.types import PerChannel, int8

CFG = LayerConfig(weight=QuantSpec(qtype=int8, granularity=PerChannel(0)))


@pytest.fixture
def private_tables(monkeypatch):
    """Copies of both tables, so registrations in a test do not leak."""
    monkeypatch.setattr(tables, "QAT_MODULES", dict(tables.QAT_MODULES))
    monkeypatch.setattr(tables, "QUANTIZED_MODULES", dict(tables.QUANTIZED_MODULES))
    return tables


@pytest.mark.parametrize("float_module,x", [
    (nn.Linear(6, 3), torch.randn(2, 6)),
    (nn.Conv1d(2, 3, 3), torch.randn(1, 2, 7)),
    (nn.Conv2d(2, 3, 3), torch.randn(1, 2, 5, 5)),
    (nn.Embedding(7, 4), torch.tensor([1, 6])),
])
def test_every_float_module_walks_the_tables(float_module, x):
    torch.manual_seed(0)
    qat_cls = tables.qat_class_for(float_module)
    qat = qat_cls.from_float(float_module, CFG).freeze()
    real_cls = tables.quantized_class_for(qat)
    assert real_cls is tables.QUANTIZED_MODULES[qat_cls]
    assert torch.equal(real_cls.from_qat(qat)(x), qat(x))


def test_lookup_uses_the_exact_type():
    qat = QuantLinear.from_float(nn.Linear(2, 2), CFG)
    assert isinstance(qat, nn.Linear), "QAT modules subclass their float module..."
    assert tables.qat_class_for(qat) is None, "...so a QAT module is never wrapped again"
    assert tables.quantized_class_for(nn.Linear(2, 2)) is None


def test_registering_a_new_module_type_adds_an_entry(private_tables):
    class MyLinear(nn.Linear):
        pass

    private_tables.register_qat_module(MyLinear, QuantLinear)
    assert private_tables.qat_class_for(MyLinear(3, 2)) is QuantLinear
    private_tables.register_qat_module(MyLinear, QuantLinear)  # same entry again: fine

    class MyQuantizedLinear(QuantizedLinear):
        pass

    private_tables.register_quantized_module(QuantLinear, MyQuantizedLinear, replace=True)
    assert private_tables.QUANTIZED_MODULES[QuantLinear] is MyQuantizedLinear


def test_registration_user_errors(private_tables):
    with pytest.raises(ConfigError, match="float_cls='Linear' is invalid.*subclass of torch.nn"):
        private_tables.register_qat_module("Linear", QuantLinear)
    with pytest.raises(ConfigError, match="qat_cls='Identity' is invalid.*from_float, to_float"):
        private_tables.register_qat_module(nn.Identity, nn.Identity)
    with pytest.raises(ConfigError, match="float_cls='Linear' is invalid.*maps to QuantLinear"
                                          ".*replace=True"):
        private_tables.register_qat_module(nn.Linear, type("OtherQuant", (QuantLinear,), {}))
    with pytest.raises(ConfigError, match="real_cls='Linear' is invalid.*from_qat"):
        private_tables.register_quantized_module(QuantLinear, nn.Linear)
    with pytest.raises(ConfigError, match="qat_cls='QuantLinear' is invalid.*replace=True"):
        private_tables.register_quantized_module(QuantLinear,
                                                 type("Other", (QuantizedLinear,), {}))
