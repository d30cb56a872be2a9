"""Every public function x a corpus of bad values: a LowbitError naming the problem, never a raw
traceback, and no file outside the output directory changed.

The cases are tables (``robust_cases_core.py``, ``robust_cases_api.py``) over the bad values of
``robust_bad_values.py``. :func:`test_every_public_callable_has_a_row` makes the tables
complete: every public callable of ``lowbit`` needs a row or a stated exemption, so a new
public function without bad-input handling fails here.
"""

from __future__ import annotations

import inspect
import os
import re
import types
from pathlib import Path

import pytest

import lowbit
from lowbit.errors import LowbitError
from robust_bad_values import BAD, OUT
from robust_cases_api import CASES as API_CASES, EXEMPT
from robust_cases_core import CASES as CORE_CASES

CASES = {**CORE_CASES, **API_CASES}
#: words of a fix ("Fix: ...", "pass ...", "use ...") that every message should carry
FIX = re.compile(r"fix|pass|use |call|add |remove|check|choose|load|wrap|pick|give|set |build"
                 r"|materialize|calibrate|convert|quantize", re.I)
PARAMS = [pytest.param(name, label, id=f"{name}-{label}")
          for name, (_, labels) in CASES.items() for label in labels]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("name,label", PARAMS)
def test_a_bad_value_is_a_lowbit_error_and_changes_no_file(name, label, tmp_path, monkeypatch):
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "keep.txt").write_text("unrelated")
    OUT["dir"] = tmp_path / "out"
    monkeypatch.chdir(watched)
    before = _snapshot(watched)
    call, _ = CASES[name]
    with pytest.raises(LowbitError) as info:
        call(BAD[label]())
    message = str(info.value).strip()
    assert message and len(message.splitlines()) <= 3, message
    assert FIX.search(message), f"the message should say how to fix it: {message}"
    assert _snapshot(watched) == before, "no file outside the output directory changed"


def public_callables() -> set[str]:
    """Every public name of ``lowbit`` that can be called (functions, classes, and the
    callable ``lowbit.search`` package); plain submodules are not entry points."""
    out = set()
    for name in dir(lowbit):
        obj = getattr(lowbit, name)
        if name.startswith("_") or not callable(obj):
            continue
        if isinstance(obj, types.ModuleType) and not callable(type(obj).__call__):
            continue
        out.add(name)
    return out


def _covered() -> set[str]:
    return {name.split("(")[0].split(".")[0] for name in CASES}


def test_every_public_callable_has_a_row():
    missing = sorted(public_callables() - _covered() - set(EXEMPT))
    assert not missing, (f"public callables without a bad-input row in robust_cases_*.py or an "
                         f"exemption in robust_cases_api.EXEMPT: {missing}")


def test_rows_and_exemptions_name_public_callables_and_do_not_overlap():
    public = public_callables()
    assert not (_covered() - public), sorted(_covered() - public)
    assert not (set(EXEMPT) - public), sorted(set(EXEMPT) - public)
    assert not (set(EXEMPT) & _covered()), sorted(set(EXEMPT) & _covered())
    for name, reason in EXEMPT.items():
        obj = getattr(lowbit, name)
        no_args = reason == "takes no arguments"
        assert not no_args or not inspect.signature(obj).parameters, name
        assert not reason.startswith("an exception") or issubclass(obj, LowbitError), name


def test_every_row_names_a_known_bad_value():
    unknown = {(n, label) for n, (_, labels) in CASES.items() for label in labels
               if label not in BAD}
    assert not unknown, unknown
