"""The `lowbit` entry point: --version, no subcommand, error reporting, the registry."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit._version import __version__
from lowbit.cli import main as cli

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def registry(monkeypatch):
    """An empty, private subcommand registry, so tests can register without leaking."""
    monkeypatch.setattr(cli, "COMMANDS", {})
    monkeypatch.setattr(cli, "COMMAND_MODULES", ())
    return cli.COMMANDS


def test_version_prints_version_and_exits_zero(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lowbit {__version__}"


def test_no_subcommand_prints_help_and_returns_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lowbit"), "help goes to stderr when no subcommand is given"
    assert "--version" in err


def test_unknown_subcommand_is_a_usage_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_module_invocation_version_and_no_subcommand():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    version = subprocess.run(
        [sys.executable, "-m", "lowbit.cli.main", "--version"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"lowbit {__version__}"

    bare = subprocess.run(
        [sys.executable, "-m", "lowbit.cli.main"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert bare.returncode == 2
    assert bare.stderr.startswith("usage: lowbit")


def test_registered_subcommand_runs_with_its_arguments(registry):
    seen = {}

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--bits", type=int, default=8)

    def run(args: argparse.Namespace) -> int:
        """Say hello."""
        seen["bits"] = args.bits
        return 0

    cli.register("hello", add_arguments, run)
    assert cli.main(["hello", "--bits", "4"]) == 0
    assert seen == {"bits": 4}
    assert "Say hello." in cli.build_parser().format_help()


def test_lowbit_error_is_one_line_on_stderr_with_status_2(registry, capsys):
    from lowbit.errors import LowbitError

    def run(args):
        raise LowbitError("bits=3 is invalid:\n  allowed 2, 4, 8")

    cli.register("fail", lambda parser: None, run)
    assert cli.main(["fail"]) == 2
    assert capsys.readouterr().err == "lowbit: error: bits=3 is invalid: allowed 2, 4, 8\n"


def test_other_exceptions_are_one_line_pointing_to_debug_which_shows_the_traceback(registry,
                                                                                   capsys):
    def run(args):
        raise RuntimeError("a bug\nwith two lines")

    cli.register("bug", lambda parser: None, run)
    assert cli.main(["bug"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "lowbit: internal error: RuntimeError: a bug with two lines")
    assert "lowbit --debug" in err
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["--debug", "bug"])


@pytest.mark.parametrize("exc,needle", [
    (PermissionError(13, "Permission denied", "/x/y"), "/x/y: Permission denied. Fix: choose"),
    (OSError(28, "No space left on device", "/x"), "No space left on device. Fix: free some"),
    (OSError(36, "File name too long", "/x" * 200), "File name too long. Fix: use a shorter"),
])
def test_os_errors_are_one_line_with_status_2(registry, capsys, exc, needle):
    def run(args):
        raise exc

    cli.register("oserr", lambda parser: None, run)
    assert cli.main(["oserr"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lowbit: error: ") and needle in err


def test_registering_a_different_command_under_a_taken_name_fails(registry):
    cli.register("x", lambda parser: None, lambda args: 0)
    with pytest.raises(ValueError, match="already registered"):
        cli.register("x", lambda parser: None, lambda args: 1)
