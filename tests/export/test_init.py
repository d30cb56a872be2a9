"""lowbit.export's public names, and that importing it leaves onnx and onnxruntime unloaded."""

from __future__ import annotations

import subprocess
import sys

import lowbit.export


def test_public_names():
    assert set(lowbit.export.__all__) == {"ExportResult", "export_onnx", "onnx_info",
                                          "validate_onnx"}
    for name in lowbit.export.__all__:
        assert getattr(lowbit.export, name).__doc__, f"{name} needs a docstring"


def test_importing_export_does_not_import_onnx():
    code = ("import sys, lowbit.export; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnx', 'onnxruntime', 'onnxscript')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", f"optional packages imported eagerly: {out.stdout}"
