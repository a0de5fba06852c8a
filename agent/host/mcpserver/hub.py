"""The configured MCP servers as one tool source of an errand.

:class:`McpHub` starts each server in its own sandbox
(:meth:`agent.host.sandbox.Sandbox.server_command`: no home, no data dir,
the workspace read-only unless the user chose otherwise, no network but the
egress proxy to the hosts the user gave it, :mod:`agent.host.mcpserver.network`), or
reaches a streamable-HTTP server from the host under the ``net(...)`` rules
(:mod:`agent.host.mcpserver.http`), compares
its tools with the pinned definitions, offers the approved ones to the agent
as ``server.tool``, and runs calls. A server that is down is restarted by the
next :meth:`connect` (each errand, or ``keyless mcp test``).
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema

from agent.errors import McpError, McpServerDownError, SandboxError, ToolValidationError
from agent.host.mcpserver.connection import (
    CALL_TIMEOUT_S,
    START_TIMEOUT_S,
    McpConnection,
    check_definition,
    result_text,
)
from agent.host.mcpserver.http import (
    McpHttpConnection,
    NetDecider,
    Resolver,
    policy_net_decider,
    refuse_all,
)
from agent.host.mcpserver.network import McpNetwork, ServerEgress
from agent.host.mcpserver.store import McpServerConfig, McpStore, PinCheck, ToolDefinition
from agent.host.policy import ToolCallRequest
from agent.host.sandbox import Sandbox, scrubbed_env
from agent.host.tools.base import DEFAULT_OUTPUT_BYTES, ToolOutput, truncate_text
from agent.host.tools.mcp import MCP_RULE
from agent.protocol import ToolOffer

log = logging.getLogger(__name__)

State = Literal["up", "down", "pending"]


@dataclass
class ServerStatus:
    """Where one server stands after :meth:`McpHub.connect`.

    Attributes:
        name: The server.
        state: ``up`` (its approved tools offered), ``pending`` (up, but some
            tools wait for approval and are not offered) or ``down``.
        reason: Why it is down, or what waits for approval.
        check: The comparison with the pins (None when down).
        rejected: Tools left out because their definition is unusable.
    """

    name: str
    state: State
    reason: str = ""
    check: PinCheck | None = None
    rejected: list[str] = field(default_factory=list)


def mcp_tool_name(server: str, tool: str) -> str:
    """The name the agent calls a server's tool by."""
    return f"{server}.{tool}"


def mcp_call(
    name: str, arguments: dict[str, Any] | None = None, *, workspace: Path | None = None
) -> ToolCallRequest:
    """The policy's request for a call of the MCP tool ``name`` (``server.tool``).

    It is an ``mcp`` call (the rule kind of :mod:`agent.host.tools.mcp`) whose
    main argument is ``name``, so ``mcp(github.*)`` rules decide it.
    """
    return ToolCallRequest(
        tool=MCP_RULE,
        arguments={
            "tool": name,
            "server": name.split(".", 1)[0],
            "arguments": dict(arguments or {}),
        },
        workspace=workspace,
    )


class McpHub:
    """The MCP servers of one host, started in sandboxes, offered under their pins.

    Args:
        store: The configured servers and pins.
        sandbox: The bubblewrap launcher; without bubblewrap no server starts.
        workspace: The errand's workspace (bound read-only unless a server's
            config says writable).
        hidden: Paths covered in every server's sandbox (data and config dirs).
        start_timeout: Seconds a server may take to start and list its tools.
        call_timeout: Seconds one call may take.
        net_decider: Decides each request to a URL server by the ``net(...)``
            rules (:func:`agent.host.mcpserver.http.policy_net_decider`);
            None refuses them all.
        resolver: Host name to addresses for URL servers (tests); None: the system's.
        tls: The TLS context URL servers are verified with (tests); None: the system's.
        network: The errand host's rules, prompt, audit, egress settings and
            broker (:meth:`use_network`); None: stdio servers have no network.
    """

    def __init__(
        self,
        store: McpStore,
        sandbox: Sandbox,
        *,
        workspace: Path,
        hidden: Sequence[Path] = (),
        start_timeout: float = START_TIMEOUT_S,
        call_timeout: float = CALL_TIMEOUT_S,
        net_decider: NetDecider | None = None,
        resolver: Resolver | None = None,
        tls: ssl.SSLContext | None = None,
        network: McpNetwork | None = None,
    ) -> None:
        self.store = store
        self._tls = tls
        self._net_decider = net_decider or refuse_all
        self._resolver = resolver
        self._sandbox = sandbox
        self.workspace = Path(workspace).resolve()
        self._hidden = [Path(p) for p in hidden]
        self._start_timeout = start_timeout
        self._call_timeout = call_timeout
        self._connections: dict[str, McpConnection] = {}
        self._egress: dict[str, ServerEgress] = {}
        self._network: McpNetwork | None = None
        if network is not None:
            self.use_network(network)
        self._offered: dict[str, tuple[str, ToolDefinition]] = {}
        self.status: dict[str, ServerStatus] = {}

    # ------------------------------------------------------------------ lifecycle

    def use_network(self, network: McpNetwork) -> None:
        """Decide and audit the servers' requests with ``network`` from the next start on.

        URL servers' requests follow its ``net(...)`` rules, asking through its
        prompt; stdio servers with hosts reach them through the egress proxy
        (when ``network.egress`` is set), with their secrets as handles.
        """
        self._network = network
        self._net_decider = policy_net_decider(
            network.policy, tainted=network.tainted, ask=network.ask, record=network.record
        )

    def connect(self, names: Sequence[str] | None = None) -> list[ServerStatus]:
        """Start every configured server that is not up (or only ``names``) and check pins.

        A server that fails is reported ``down``; the others go on.

        Returns:
            The status of each server considered.
        """
        configs = [c for c in self.store.servers() if names is None or c.name in names]
        known = {c.name for c in self.store.servers()}
        for gone in [n for n in self._connections if n not in known]:
            self._drop(gone)
        out = []
        for config in configs:
            conn = self._connections.get(config.name)
            if conn is None or not conn.up:
                self._drop(config.name)
                conn = self._start(config)
            out.append(self._check(config.name, conn))
        return out

    def close(self) -> None:
        """Stop every server."""
        for name in list(self._connections):
            self._drop(name)

    def approve(self, server: str) -> PinCheck:
        """Pin ``server``'s tools as listed now (after the user saw :attr:`status`'s diff).

        Raises:
            McpError: The server is not configured or not up.
        """
        self.store.server(server)
        conn = self._connections.get(server)
        if conn is None or not conn.up:
            self.connect([server])
            conn = self._connections.get(server)
        if conn is None or not conn.up:
            raise McpError(f"MCP server {server!r} is down; nothing to approve")
        tools, _ = self._definitions(conn)
        self.store.approve(server, tools)
        self._check(server, conn)
        check = self.status[server].check
        assert check is not None
        return check

    # ------------------------------------------------------------------ tools

    def offers(self) -> list[ToolOffer]:
        """The approved tools of the servers that are up, as ``server.tool``."""
        return [
            ToolOffer(
                name=name,
                description=f"[MCP server {server}] {definition.description}".strip(),
                parameters=definition.input_schema,
            )
            for name, (server, definition) in self._offered.items()
        ]

    def has(self, name: str) -> bool:
        """Whether ``name`` is an offered MCP tool."""
        return name in self._offered

    def server_of(self, name: str) -> str:
        """The server an offered tool ``name`` comes from."""
        return self._offered[name][0]

    def validate(self, name: str, arguments: dict[str, Any]) -> None:
        """Check ``arguments`` against the pinned input schema of ``name``.

        Raises:
            ToolValidationError: They do not validate; the message names the first problem.
        """
        schema = self._offered[name][1].input_schema
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(arguments)
        )
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "(arguments)"
            raise ToolValidationError(f"invalid arguments for {name}: {where}: {error.message}")

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[ToolOutput, bool]:
        """Run the offered tool ``name``; its output is untrusted, cut to a size limit.

        Returns:
            The output and whether the server reported success.

        Raises:
            McpServerDownError: The server is down or broke during the call
                (it is marked down; the next :meth:`connect` restarts it).
        """
        server, definition = self._offered[name]
        conn = self._connections.get(server)
        if conn is None:
            raise McpServerDownError(f"MCP server {server!r} is not running")
        try:
            result = conn.call(definition.name, arguments)
            try:
                text, is_error = result_text(result)
            except McpServerDownError as e:
                conn.mark_down(str(e))
                raise McpServerDownError(f"MCP server {server!r} failed: {e}") from e
        except McpServerDownError as e:
            if not conn.up:
                self._server_down(server, conn.down_reason or str(e))
            raise
        content, cut = truncate_text(text, DEFAULT_OUTPUT_BYTES)
        return ToolOutput(content=content, truncated=cut, untrusted=True), not is_error

    # ------------------------------------------------------------------ internals

    def _start(self, config: McpServerConfig) -> McpConnection:
        if config.url is not None:
            conn: McpConnection = McpHttpConnection(
                config.name,
                config.url,
                decide=self._net_decider,
                allow_local=config.allow_local,
                resolver=self._resolver,
                tls=self._tls,
                start_timeout=self._start_timeout,
                call_timeout=self._call_timeout,
                record=None if self._network is None else self._network.record,
            )
            try:
                conn.start()
            except McpServerDownError:
                pass  # reported through its status
            self._connections[config.name] = conn
            return conn
        try:
            argv = self.server_argv(config)
        except (SandboxError, McpError) as e:
            self._close_egress(config.name)
            conn = McpConnection(config.name, [], env={})
            conn.down_reason = str(e)
        else:
            conn = McpConnection(
                config.name,
                argv,
                env=scrubbed_env(),
                start_timeout=self._start_timeout,
                call_timeout=self._call_timeout,
            )
            try:
                conn.start()
            except McpServerDownError:
                self._close_egress(config.name)  # its proxy session and grants end with it
        self._connections[config.name] = conn
        return conn

    def server_argv(self, config: McpServerConfig) -> list[str]:
        """The sandboxed command line of ``config``'s server.

        Raises:
            McpError: Without bubblewrap (a server never runs unsandboxed).
            SandboxError: A file it names cannot be exposed.
        """
        if config.command is None:
            raise McpError(f"MCP server {config.name!r} is a URL server; it has no command")
        if not self._sandbox.available:
            raise McpError("bubblewrap is not available: MCP servers only run sandboxed")
        # A script or program named by absolute path is bound read-only, alone.
        binds = [
            Path(a)
            for a in (config.command, *config.args)
            if os.path.isabs(a) and os.path.isfile(a) and not _inside_python(Path(a))
        ]
        channel, forwarder, env = None, None, None
        network = self._network
        if config.hosts and network is not None and network.egress is not None:
            self._close_egress(config.name)
            egress = ServerEgress(config, network)
            channel, forwarder, env = egress.open()
            self._egress[config.name] = egress
        return self._sandbox.server_command(
            [config.command, *config.args],
            workspace=self.workspace,
            writable=config.workspace_writable,
            extra_ro_binds=binds,
            hide=self._hidden,
            env=env,
            egress=channel,
            forwarder=forwarder,
        )

    def _definitions(self, conn: McpConnection) -> tuple[list[ToolDefinition], list[str]]:
        tools, rejected = [], []
        for tool in conn.tools:
            try:
                tools.append(check_definition(tool))
            except McpError as e:
                rejected.append(str(e))
        return tools, rejected

    def _check(self, name: str, conn: McpConnection) -> ServerStatus:
        for offered in [k for k, (s, _) in self._offered.items() if s == name]:
            del self._offered[offered]
        if not conn.up:
            return self._server_down(name, conn.down_reason or "not started")
        tools, rejected = self._definitions(conn)
        check = self.store.check(name, tools)
        for definition in check.approved:
            self._offered[mcp_tool_name(name, definition.name)] = (name, definition)
        if check.pending:
            held = ", ".join(t.name for t in (*check.changed, *check.new))
            status = ServerStatus(
                name, "pending", f"not offered until approved: {held}", check, rejected
            )
        else:
            status = ServerStatus(name, "up", "", check, rejected)
        self.status[name] = status
        return status

    def _server_down(self, name: str, reason: str) -> ServerStatus:
        for offered in [k for k, (s, _) in self._offered.items() if s == name]:
            del self._offered[offered]
        status = ServerStatus(name, "down", reason)
        self.status[name] = status
        return status

    def _drop(self, name: str) -> None:
        conn = self._connections.pop(name, None)
        if conn is not None:
            conn.close()
        self._close_egress(name)

    def _close_egress(self, name: str) -> None:
        egress = self._egress.pop(name, None)
        if egress is not None:
            egress.close()


def _inside_python(path: Path) -> bool:
    real = Path(os.path.realpath(path))
    roots = {Path(os.path.realpath(p)) for p in (sys.base_prefix, sys.prefix)}
    return any(r == real or r in real.parents for r in roots)
