"""The float -> QAT -> real module tables.

``QAT_MODULES`` maps a float module class to its fake-quant twin (built with
``qat_cls.from_float(module, config, fq_impl)``); ``QUANTIZED_MODULES`` maps a QAT class to
its real low-bit twin (built with ``real_cls.from_qat(qat_module)``).  A new module type adds
an entry with :func:`register_qat_module` / :func:`register_quantized_module`, never an
if-chain.  Look-ups use the module's exact type: QAT classes subclass their float classes, so
an ``isinstance`` walk would mistake a ``QuantLinear`` for an ``nn.Linear``.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .complex import ComplexPoint, QuantComplexPoint
from .qat import QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear
from .quantized import QuantizedConv1d, QuantizedConv2d, QuantizedEmbedding, QuantizedLinear

#: float module class -> QAT class
QAT_MODULES: dict[type, type] = {
    nn.Linear: QuantLinear,
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Embedding: QuantEmbedding,
    ComplexPoint: QuantComplexPoint,  # activation only: convert keeps it fake-quant
}

#: QAT class -> real low-bit class
QUANTIZED_MODULES: dict[type, type] = {
    QuantLinear: QuantizedLinear,
    QuantConv1d: QuantizedConv1d,
    QuantConv2d: QuantizedConv2d,
    QuantEmbedding: QuantizedEmbedding,
}


def _check_class(field: str, cls, methods: tuple[str, ...]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(field, cls, "a subclass of torch.nn.Module",
                          fix="pass the class itself, not an instance or a name")
    missing = [m for m in methods if not callable(getattr(cls, m, None))]
    if missing:
        raise ConfigError(field, cls.__name__, f"a class defining {', '.join(methods)}",
                          fix=f"add {', '.join(missing)} to {cls.__name__}")


def _register(table: dict, field: str, key: type, value: type, replace: bool) -> None:
    current = table.get(key)
    if current is not None and current is not value and not replace:
        raise ConfigError(field, key.__name__, f"a class not yet registered (it maps to "
                          f"{current.__name__})", fix="pass replace=True to override the entry")
    table[key] = value


def register_qat_module(float_cls: type, qat_cls: type, *, replace: bool = False) -> None:
    """Map ``float_cls`` to ``qat_cls`` (which needs ``from_float`` and ``to_float``)."""
    _check_class("float_cls", float_cls, ())
    _check_class("qat_cls", qat_cls, ("from_float", "to_float"))
    _register(QAT_MODULES, "float_cls", float_cls, qat_cls, replace)


def register_quantized_module(qat_cls: type, real_cls: type, *, replace: bool = False) -> None:
    """Map ``qat_cls`` to ``real_cls`` (which needs ``from_qat``)."""
    _check_class("qat_cls", qat_cls, ("from_float", "to_float"))
    _check_class("real_cls", real_cls, ("from_qat",))
    _register(QUANTIZED_MODULES, "qat_cls", qat_cls, real_cls, replace)


def qat_class_for(module: nn.Module) -> type | None:
    """The QAT class registered for ``module``'s exact type, or None."""
    return QAT_MODULES.get(type(module))


def quantized_class_for(module: nn.Module) -> type | None:
    """The real low-bit class registered for a QAT ``module``'s exact type, or None."""
    return QUANTIZED_MODULES.get(type(module))
