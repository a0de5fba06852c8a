"""``keyless mcp``: configure, check and approve Model Context Protocol tool servers.

Subcommands: ``add NAME [--writable] [--host HOST[:PORT] ...] [--secret
ENV=VAULT_NAME[@HOST] ...] -- COMMAND [ARG ...]`` (a stdio server; with hosts it
reaches them through the egress proxy, each secret given as a ``cap_`` handle
in ``ENV``),
``add NAME --url URL [--allow-local]`` (a streamable-HTTP server, reached from
the host under the ``net(...)`` rules), ``list``,
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
from agent.host.mcpserver.http import policy_net_decider
from agent.host.mcpserver.hub import McpHub
from agent.host.mcpserver.network import McpNetwork
from agent.host.mcpserver.store import McpSecret, McpServerConfig, McpStore, parse_host
from agent.host.policy import PolicyEngine
from agent.host.sandbox import Sandbox
from app.cli_common import CliError, Handler, add_workspace_option, set_command
from app.services import AppServices, ServiceUnavailableError


def register(subparsers: Any) -> None:
    """Add the ``mcp`` command group to the ``keyless`` parser."""
    parser = subparsers.add_parser(
        "mcp",
        help="configure MCP tool servers",
        description="MCP tool servers: each runs in its own sandbox, its tools pinned on approval.",
    )
    commands = parser.add_subparsers(dest="mcp_command", metavar="COMMAND", required=True)

    add = commands.add_parser(
        "add",
        help="add a server: add [OPTIONS] NAME -- COMMAND [ARG ...], or add NAME --url URL",
    )
    add.add_argument("name", help="short name; its tools are offered as NAME.tool")
    add.add_argument("--writable", action="store_true", help="bind the workspace read-write")
    add.add_argument("--url", help="a streamable-HTTP server's endpoint (https://host/mcp)")
    add.add_argument(
        "--allow-local", action="store_true",
        help="let --url reach this machine or the LAN (refused otherwise)",
    )  # fmt: skip
    add.add_argument(
        "--host", action="append", default=[], metavar="HOST[:PORT]",
        help="a host the stdio server may reach through the egress proxy (repeatable)",
    )  # fmt: skip
    add.add_argument(
        "--secret", action="append", default=[], metavar="ENV=VAULT_NAME[@HOST]",
        help="give the server the vault secret VAULT_NAME as a cap_ handle in ENV, "
        "swapped by the proxy on requests to HOST (default: the only --host)",
    )  # fmt: skip
    # "*", not REMAINDER: options (--url) may follow the name; a command goes after "--".
    add.add_argument("argv", nargs="*", help="-- COMMAND [ARG ...]")
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
    if not argv and not args.url:
        raise CliError(
            "name the server's command after '--' (add NAME -- COMMAND [ARG ...]) "
            "or its URL (add NAME --url URL)"
        )
    try:
        if args.url:
            if argv:
                raise CliError("give either --url or a command after '--', not both")
            if args.host or args.secret:
                raise CliError("--host and --secret are for a stdio server, not a --url one")
            config = McpServerConfig(name=args.name, url=args.url, allow_local=args.allow_local)
        else:
            hosts = _hosts(args.host)
            config = McpServerConfig(
                name=args.name, command=argv[0], args=argv[1:], workspace_writable=args.writable,
                allow_local=args.allow_local, hosts=list(hosts),
                secrets=[_secret(text, hosts) for text in args.secret],
            )  # fmt: skip
    except ValidationError as e:
        item = e.errors(include_url=False)[0]
        raise CliError(str(item["msg"]).removeprefix("Value error, ")) from e
    _store(AppServices()).add(config)
    print(f"added {config.name}; run `keyless mcp test {config.name}` and approve its tools")
    return 0


def _hosts(texts: list[str]) -> dict[str, int]:
    """``--host`` values as host name to port."""
    hosts: dict[str, int] = {}
    for text in texts:
        try:
            host, port = parse_host(text)
        except ValueError as e:
            raise CliError(f"--host {e}") from e
        hosts[host] = port
    return hosts


def _secret(text: str, hosts: dict[str, int]) -> McpSecret:
    """One ``--secret ENV=VAULT_NAME[@HOST]``, its host one of ``hosts``."""
    env, sep, rest = text.partition("=")
    name, at, host = rest.rpartition("@") if "@" in rest else (rest, "", "")
    if not sep or not env or not name:
        raise CliError(f"--secret {text[:80]!r}: write ENV=VAULT_NAME[@HOST]")
    if not at:
        if len(hosts) != 1:
            raise CliError(
                f"--secret {env}: name its host (ENV=VAULT_NAME@HOST), one of the --host values"
            )
        (host,) = hosts
    host = host.lower().rstrip(".")
    if host not in hosts:
        raise CliError(f"--secret {env}: {host!r} is not one of the --host values")
    return McpSecret.model_validate({"env": env, "secret": name, "host": host,
                                     "port": hosts[host]})  # fmt: skip


def _list(args: argparse.Namespace) -> int:
    store = _store(AppServices())
    for config in store.servers():
        pinned = len(store.pins(config.name))
        if config.url is not None:
            mode = "http, local allowed" if config.allow_local else "http"
        else:
            mode = "workspace rw" if config.workspace_writable else "workspace ro"
            if config.hosts:
                mode += f", hosts {','.join(config.hosts)}"
            if config.secrets:
                given = (f"{s.env}={s.secret}@{s.host}" for s in config.secrets)
                mode += ", secrets " + ",".join(given)
        print(f"{config.name}\t{mode}\t{pinned} tools approved\t{config.describe()}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    _store(AppServices()).remove(args.name)
    print(f"removed {args.name}")
    return 0


def _hub(args: argparse.Namespace) -> McpHub:
    services = AppServices()
    store = _store(services)
    store.server(args.name)
    return hub_for(services, store, Path(args.workspace) if args.workspace else None)


def hub_for(services: AppServices, store: McpStore, workspace: Path | None) -> McpHub:
    """The hub over ``store`` for ``workspace`` (default: the app's, else the current dir).

    Stdio servers run in their sandboxes with the data and config dirs hidden,
    those with hosts reaching them through the egress proxy (their secrets
    need the vault open); URL servers are reached under the saved
    ``net(...)`` rules. Network decisions go to the audit log.
    """
    where = Path(workspace or services.workspace or Path.cwd())
    hub = McpHub(
        store, Sandbox.detect(), workspace=where, hidden=services.protected_paths(),
        net_decider=policy_net_decider(stored_policy(services, where)),
    )  # fmt: skip
    hub.use_network(_network(services, where))
    return hub


def _network(services: AppServices, workspace: Path) -> McpNetwork:
    """The network of ``keyless mcp test``/``approve``: no prompt, the user's audit log."""
    import secrets

    session = f"mcp-test-{secrets.token_hex(4)}"
    try:
        audit = services.audit
    except ServiceUnavailableError:
        audit = None

    def record(kind: str, **fields: Any) -> None:
        if audit is not None:
            audit.record(kind, session_id=session, **fields)

    return McpNetwork(
        policy=stored_policy(services, workspace), record=record, session_id=session,
        egress=services.egress_settings(), broker=services.live_broker(),
    )  # fmt: skip


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


def stored_policy(services: AppServices, workspace: Path) -> PolicyEngine:
    """The user's and the workspace's saved rules (the defaults alone when none can be read)."""
    try:
        store = services.rule_store(workspace)
    except ServiceUnavailableError:
        return PolicyEngine([])
    try:
        return PolicyEngine(list(store.rules(workspace)))
    finally:
        store.close()


def mcp_hub(
    services: AppServices, workspace: Path, *, policy: PolicyEngine | None = None
) -> McpHub | None:
    """The hub of the configured servers for an errand host, or None when there are none.

    Requests to URL servers are decided by ``policy``'s ``net(...)`` rules (by
    default the saved rules); a request the rules would ask about is refused,
    naming the rule that allows it, until an errand host takes the hub
    (:meth:`McpHub.use_network`): then it asks through that host's prompt.
    """
    store = _store(services)
    if not store.servers():
        store.close()
        return None
    return McpHub(
        store, Sandbox.detect(), workspace=workspace, hidden=services.protected_paths(),
        net_decider=policy_net_decider(policy or stored_policy(services, workspace)),
    )  # fmt: skip
