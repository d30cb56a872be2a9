"""The ``lowbit`` command: argument parsing, subcommand dispatch and error reporting.

A subcommand is a module under ``lowbit/cli/`` that defines two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...   # its docstring's first line is the help

and is listed in :data:`COMMAND_MODULES` (the subcommand takes the module's name). Code that is
not a module of its own can call :func:`register` instead. Subcommand modules keep heavy imports
(transformers, onnx, ...) inside ``run`` so that ``lowbit --help`` stays fast.

Errors lowbit raises on purpose (:class:`lowbit.errors.LowbitError`) and operating-system
errors (:class:`OSError`: a missing, unreadable or unwritable path, a full disk) are printed as
one line, ``lowbit: error: <message>``, with exit status 2.  Anything else is a bug: one line
naming it and pointing to ``--debug``, exit status 1; ``lowbit --debug ...`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from lowbit._version import __version__

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], "int | None"]

#: Modules under ``lowbit/cli/`` that each provide the subcommand of the same name.
COMMAND_MODULES: tuple[str, ...] = ("demo", "quantize", "eval", "export", "compare", "report",
                                    "search", "tune")

#: The subcommand registry: name -> (add_arguments, run).
COMMANDS: dict[str, tuple[AddArguments, Run]] = {}

PROG = "lowbit"
USAGE_ERROR = 2
INTERNAL_ERROR = 1


def register(name: str, add_arguments: AddArguments, run: Run) -> None:
    """Add subcommand ``name``; registering the same functions again is a no-op."""
    existing = COMMANDS.get(name)
    if existing is not None and existing != (add_arguments, run):
        raise ValueError(f"lowbit subcommand {name!r} is already registered")
    COMMANDS[name] = (add_arguments, run)


def _load_command_modules() -> None:
    for name in COMMAND_MODULES:
        if name not in COMMANDS:
            module = importlib.import_module(f"lowbit.cli.{name}")
            register(name, module.add_arguments, module.run)


def _first_line(doc: str | None) -> str | None:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else None


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered subcommand."""
    _load_command_modules()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Quantize PyTorch models to low-bit integers.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an unexpected error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in sorted(COMMANDS):
        add_arguments, run = COMMANDS[name]
        help_text = _first_line(run.__doc__)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(_run=run)
    return parser


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lowbit`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else USAGE_ERROR)

    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR

    try:
        from lowbit.cli.launch import process_group  # torchrun: one process group

        with process_group(args.command):
            status = run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from lowbit.errors import LowbitError  # lazily: keeps `lowbit --version` light

        if isinstance(exc, LowbitError):
            print(f"{PROG}: error: {_one_line(str(exc)) or type(exc).__name__}", file=sys.stderr)
            return USAGE_ERROR
        if isinstance(exc, OSError):
            print(f"{PROG}: error: {_os_error(exc)}", file=sys.stderr)
            return USAGE_ERROR
        if getattr(args, "debug", False):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]} "
              f"(a bug in lowbit or in the model; rerun with `{PROG} --debug ...` for the "
              "traceback and report it)", file=sys.stderr)
        return INTERNAL_ERROR
    return 0 if status is None else int(status)


def _os_error(exc: OSError) -> str:
    """``<path>: <reason>. Fix: ...`` for an OSError."""
    where = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or _one_line(str(exc)) or type(exc).__name__
    fixes = {"ENAMETOOLONG": "use a shorter path",
             "ENOSPC": "free some disk space or write elsewhere",
             "EACCES": "choose a path you may read and write, or fix its permissions",
             "EROFS": "choose a writable location", "ENOENT": "check that the path exists",
             "EEXIST": "a file is in the way: remove it or choose another path",
             "ENOTDIR": "a file is in the way of a folder: choose another path",
             "EISDIR": "pass a file path, not a folder"}
    import errno

    fix = fixes.get(errno.errorcode.get(exc.errno or 0, ""), "check the path and try again")
    return f"{where}{': ' if where else ''}{reason}. Fix: {fix}"


if __name__ == "__main__":
    sys.exit(main())
