"""The ``keyless`` command line.

``keyless`` alone opens the desktop app; subcommands run the headless host
(``chat``, ``run``, ``vault``, ``memory``, ...). Each command group lives in its
own ``app/cli_*.py`` module exposing ``register(subparsers)``; the modules are
listed in :data:`COMMAND_MODULES` so adding one is a one-line change.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "app.cli_chat",
    "app.cli_vault",
    "app.cli_memory",
    "app.cli_run",
    "app.cli_sessions",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available command group."""
    parser = argparse.ArgumentParser(
        prog="keyless",
        description="A local model that runs errands on your machine without holding your keys.",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check the installation (model, sink cache, vault, sandboxed agent) and exit",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but something it needs is missing
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_test:
        from app.selftest import run_self_test

        return run_self_test()
    func = getattr(args, "func", None)
    if func is None:
        return _open_gui_or_chat(parser)
    status: int = func(args)
    return status


def _open_gui_or_chat(parser: argparse.ArgumentParser) -> int:
    try:
        gui = importlib.import_module("app.gui")
    except ModuleNotFoundError as e:
        if e.name != "app.gui":
            raise
        # Before the desktop app exists, `keyless` starts the terminal chat.
        chat_args = parser.parse_args(["chat"])
        status: int = chat_args.func(chat_args)
        return status
    result: int = gui.main()
    return result


if __name__ == "__main__":
    sys.exit(main())
