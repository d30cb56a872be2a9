"""README's Guarantees section names tests that exist: each ``tests/...py::test_name``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def test_every_guarantee_names_a_test_that_exists():
    section = _section((ROOT / "README.md").read_text(encoding="utf-8"), "Guarantees")
    refs = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", section)
    bullets = [b for b in section.split("\n- ")[1:]]
    assert len(bullets) >= 8 and len(refs) >= len(bullets)
    for bullet in bullets:
        assert "::test_" in bullet, f"a guarantee without a test: {bullet[:80]!r}"
    for path, name in refs:
        file = ROOT / path
        assert file.is_file(), f"{path} is named in README's Guarantees but does not exist"
        functions = {n.name for n in ast.walk(ast.parse(file.read_text(encoding="utf-8")))
                     if isinstance(n, ast.FunctionDef)}
        assert name in functions, f"{path}::{name} is named in README's Guarantees but missing"
