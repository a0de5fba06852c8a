"""The ``keyless`` command line.

``keyless`` alone opens the desktop app; subcommands run the headless host
(``chat``, ``run``, ``vault``, ``memory``). Each command group lives in its own
``app/cli_*.py`` module exposing ``register(subparsers)``, listed in
:data:`COMMAND_MODULES`; the conventions they share (one error type and one way
to print it, the exit-status table, argument types, session ids) are in
:mod:`app.cli_common`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType

from app import cli_chat, cli_mcp, cli_memory, cli_models, cli_run, cli_sessions, cli_vault
from app.cli_common import CliError, CommandParser, ExitStatus, fail

COMMAND_MODULES: tuple[ModuleType, ...] = (
    cli_chat,
    cli_vault,
    cli_memory,
    cli_run,
    cli_sessions,
    cli_models,
    cli_mcp,
)


def build_parser() -> CommandParser:
    """Build the argument parser with every command group."""
    parser = CommandParser(
        prog="keyless",
        description="A local model that runs errands on your machine without holding your keys.",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check the installation (model, sink cache, vault, sandboxed agent) and exit",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit status (:class:`ExitStatus`).

    A usage error exits (``SystemExit``) with :attr:`ExitStatus.USAGE`, as
    argparse does; a :class:`~app.cli_common.CliError` a command raises is
    printed as ``keyless <command>: error: <message>`` and its status returned.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Said by the command's own parser, with its usage and its name.
        leaf: CommandParser = getattr(args, "command_parser", parser)
        leaf.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.self_test:
        from app.selftest import run_self_test

        return run_self_test()
    func = getattr(args, "func", None)
    if func is None:
        from app.gui import main as gui_main

        return gui_main()
    try:
        return int(func(args))
    except CliError as e:
        return fail(args.command, e)
    except KeyboardInterrupt:
        return fail(args.command, CliError("interrupted", ExitStatus.INTERRUPTED))


if __name__ == "__main__":
    sys.exit(main())
