"""``keyless mcp``: configure, check and approve Model Context Protocol tool servers.

Subcommands: ``add NAME [--writable] -- COMMAND [ARG ...]``, ``list``,
``rm NAME``, ``test NAME`` (start it in its sandbox, list its tools and show
what changed since approval) and ``approve NAME`` (pin the tools as listed
now). A server's tools are offered to the agent as ``NAME.tool`` only once
approved, and again only after a change is approved.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.errors import McpError
from agent.host.mcpserver.hub import McpHub
from agent.host.mcpserver.store import McpServerConfig, McpStore
from agent.host.sandbox import Sandbox
from app.cli_common import CliError, Handler, add_workspace_option, set_command
from app.services import AppServices


def register(subparsers: Any) -> None:
    """Add the ``mcp`` command group to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "mcp",
        help="configure MCP tool servers",
        description="MCP tool servers: each runs in its own sandbox, its tools pinned on approval.",
    )
    commands = parser.add_subparsers(dest="mcp_command", metavar="COMMAND", required=True)

    add = commands.add_parser("add", help="add a stdio server: add NAME -- COMMAND [ARG ...]")
    add.add_argument("name", help="short name; its tools are offered as NAME.tool")
    add.add_argument("--writable", action="store_true", help="bind the workspace read-write")
    add.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    _set_command(add, _add)

    listing = commands.add_parser("list", help="the configured servers")
    _set_command(listing, _list)

    rm = commands.add_parser("rm", help="remove a server and its approvals")
    rm.add_argument("name")
    _set_command(rm, _rm)

    for verb, handler, text in (
        ("test", _test, "start a server, list its tools and what changed since approval"),
        ("approve", _approve, "pin a server's tools as it lists them now"),
    ):
        sub = commands.add_parser(verb, help=text)
        sub.add_argument("name")
        add_workspace_option(sub, required=False, help="workspace (default: the app's, else .)")
        _set_command(sub, handler)


def _set_command(parser: argparse.ArgumentParser, handler: Handler) -> None:
    set_command(parser, handler, converts=(McpError,))


def _store(services: AppServices) -> McpStore:
    return McpStore(services.paths.database)


def _add(args: argparse.Namespace) -> int:
    argv = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else list(args.argv)
    if not argv:
        raise CliError("name the server's command after '--': add NAME -- COMMAND [ARG ...]")
    try:
        config = McpServerConfig(
            name=args.name, command=argv[0], args=argv[1:], workspace_writable=args.writable
        )
    except ValidationError as e:
        item = e.errors(include_url=False)[0]
        raise CliError(str(item["msg"]).removeprefix("Value error, ")) from e
    _store(AppServices()).add(config)
    print(f"added {config.name}; run `keyless mcp test {config.name}` and approve its tools")
    return 0


def _list(args: argparse.Namespace) -> int:
    store = _store(AppServices())
    for config in store.servers():
        pinned = len(store.pins(config.name))
        mode = "rw" if config.workspace_writable else "ro"
        command = " ".join([config.command, *config.args])
        print(f"{config.name}\tworkspace {mode}\t{pinned} tools approved\t{command}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    _store(AppServices()).remove(args.name)
    print(f"removed {args.name}")
    return 0


def _hub(args: argparse.Namespace) -> McpHub:
    services = AppServices()
    store = _store(services)
    store.server(args.name)
    workspace = args.workspace or services.workspace or Path.cwd()
    return McpHub(
        store, Sandbox.detect(), workspace=workspace, hidden=services.protected_paths()
    )


def _test(args: argparse.Namespace) -> int:
    hub = _hub(args)
    try:
        (status,) = hub.connect([args.name])
        print(f"{status.name}: {status.state}{': ' + status.reason if status.reason else ''}")
        for problem in status.rejected:
            print(f"  left out: {problem}")
        if status.check is not None:
            for tool in status.check.approved:
                print(f"  approved  {args.name}.{tool.name}")
            for tool in status.check.changed:
                print(f"  CHANGED   {args.name}.{tool.name}")
            for tool in status.check.new:
                print(f"  new       {args.name}.{tool.name}")
            for name in status.check.removed:
                print(f"  removed   {args.name}.{name}")
            if status.check.diff:
                sys.stdout.write(status.check.diff)
                print(f"approve with: keyless mcp approve {args.name}")
        return 0 if status.state == "up" else 1
    finally:
        hub.close()


def _approve(args: argparse.Namespace) -> int:
    hub = _hub(args)
    try:
        check = hub.approve(args.name)
        names = ", ".join(t.name for t in check.approved) or "no tools"
        print(f"approved {args.name}: {names}")
        return 0
    finally:
        hub.close()


def mcp_hub(services: AppServices, workspace: Path) -> McpHub | None:
    """The hub of the configured servers for an errand host, or None when there are none."""
    store = _store(services)
    if not store.servers():
        store.close()
        return None
    return McpHub(store, Sandbox.detect(), workspace=workspace, hidden=services.protected_paths())
