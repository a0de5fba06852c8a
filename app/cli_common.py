"""What every ``keyless`` command shares: errors, exit statuses, argument types, session ids.

A command reports a problem by raising :class:`CliError` (or, where it writes
to a stream it was given, by calling :func:`fail`); errors of other packages
are converted at the command's boundary (:func:`set_command`'s ``converts``).
Every error line has one form, the one argparse gives usage errors::

    keyless <command>: error: <message>

Exit statuses, one table for every command (:class:`ExitStatus`):

======  ===========  ==========================================================
status  name         meaning
======  ===========  ==========================================================
0       OK           done (``run``: the errand answered)
1       ERROR        failed: a vault, memory or model error, a refusal (e.g. a
                     vault that will not unlock), a broken audit chain, a crash
2       USAGE        the command line is wrong (unknown option, bad value,
                     missing argument); nothing was done
3       LIMIT        ``run`` only: stopped by the step or token limit
130     INTERRUPTED  Ctrl-C: cancelled (128 + SIGINT, as shells report it)
======  ===========  ==========================================================
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import sys
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import IO, NoReturn

Handler = Callable[[argparse.Namespace], int]

MAX_N_CTX = 1_048_576
"""The largest context ``--n-ctx`` accepts (the app settings' bound)."""


class ExitStatus(IntEnum):
    """The process exit statuses of ``keyless`` (the table in this module's docstring)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    LIMIT = 3
    INTERRUPTED = 130


class CliError(Exception):
    """A problem a command reports in one line, and the status it exits with.

    Args:
        message: What went wrong, naming the argument or thing at fault.
        status: The exit status (default :attr:`ExitStatus.ERROR`).
    """

    def __init__(self, message: str, status: ExitStatus = ExitStatus.ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def report_error(command: str, message: object, err: IO[str] | None = None) -> None:
    """Print ``keyless <command>: error: <message>`` to ``err`` (default stderr).

    Args:
        command: The command as typed after ``keyless`` (``"vault grant"``);
            empty for ``keyless`` itself.
        message: The message (an exception prints as its text).
        err: The stream (default: ``sys.stderr`` at the time of the call).
    """
    name = f"keyless {command}" if command else "keyless"
    print(f"{name}: error: {message}", file=err if err is not None else sys.stderr, flush=True)


def fail(command: str, error: CliError, err: IO[str] | None = None) -> int:
    """Report ``error`` as :func:`report_error` does and return its exit status."""
    report_error(command, error.message, err)
    return int(error.status)


def command_name(prog: str) -> str:
    """The command part of a parser's ``prog`` (``"keyless vault grant"`` → ``"vault grant"``)."""
    return prog.removeprefix("keyless").strip()


class CommandParser(argparse.ArgumentParser):
    """The ``keyless`` parser: usage errors print through :func:`report_error`.

    Subparsers are of this class too (argparse makes them of the parent's class),
    so every command's usage errors read ``keyless <command>: error: ...`` and
    exit with :attr:`ExitStatus.USAGE`.
    """

    def error(self, message: str) -> NoReturn:
        """Print the usage and the error, then exit with :attr:`ExitStatus.USAGE`."""
        self.print_usage(sys.stderr)
        report_error(command_name(self.prog), message)
        raise SystemExit(ExitStatus.USAGE)


def set_command(
    parser: argparse.ArgumentParser,
    handler: Handler,
    *,
    converts: tuple[type[Exception], ...] = (),
) -> None:
    """Make ``handler`` the command ``parser`` runs.

    :func:`app.cli.main` calls it with the parsed arguments, reports a
    :class:`CliError` it raises under the command's name, and exits with its
    status.

    Args:
        parser: The command's (sub)parser.
        handler: Runs the command; returns an exit status.
        converts: Errors of other packages that mean "the command failed"
            (e.g. ``VaultError``): raised by ``handler``, each becomes a
            :class:`CliError` with its message and :attr:`ExitStatus.ERROR`.
    """

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except converts as e:
            raise CliError(str(e)) from e

    parser.set_defaults(func=run, command=command_name(parser.prog), command_parser=parser)


# ------------------------------------------------------------ argument types
# Each raises argparse.ArgumentTypeError, which argparse turns into a usage
# error naming the option: "keyless run: error: argument --max-steps: ...".


def whole_number(text: str) -> int:
    """A base-10 integer."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argument type for a whole number from ``low`` to ``high`` (inclusive; None: no top)."""

    def parse(text: str) -> int:
        value = whole_number(text)
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text!r}"
            )
        if value < low:
            raise argparse.ArgumentTypeError(
                f"expected a whole number of at least {low}, got {text!r}"
            )
        return value

    return parse


positive_int = int_range(1)
"""A whole number of at least 1."""

non_negative_int = int_range(0)
"""A whole number of at least 0."""

n_ctx = int_range(1, MAX_N_CTX)
"""A context size in tokens."""


def workspace_dir(text: str) -> Path:
    """An existing directory, with ``~`` expanded and the path resolved."""
    path = Path(text).expanduser().resolve()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"workspace {path} is not a directory")
    return path


def existing_file(text: str) -> Path:
    """An existing file (``~`` expanded)."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path} does not exist or is not a file")
    return path


def valid_session_id(text: str) -> str:
    """A session id: it names a memory file, so letters, digits, ``.``, ``_`` and ``-`` only."""
    from memory.errors import InvalidMemoryError
    from memory.store import check_session_id

    try:
        return check_session_id(text)
    except InvalidMemoryError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def new_session_id(now: dt.datetime | None = None) -> str:
    """Mint a fresh session id: sortable by time, unique by 32 random bits.

    Args:
        now: The time to stamp (default: now, UTC).

    Returns:
        ``YYYYMMDD-HHMMSS-xxxxxxxx``, valid as :func:`valid_session_id` requires.
    """
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def add_workspace_option(parser: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    """Add ``--workspace``/``-w``, an existing directory (:func:`workspace_dir`)."""
    parser.add_argument(
        "--workspace", "-w", type=workspace_dir, required=required, metavar="DIR", help=help
    )


__all__ = [
    "MAX_N_CTX",
    "CliError",
    "CommandParser",
    "ExitStatus",
    "Handler",
    "add_workspace_option",
    "command_name",
    "existing_file",
    "fail",
    "int_range",
    "n_ctx",
    "new_session_id",
    "non_negative_int",
    "positive_int",
    "report_error",
    "set_command",
    "valid_session_id",
    "whole_number",
]
