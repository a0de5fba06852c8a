"""A stdio MCP server's network: its own egress proxy session, its hosts, its secrets as handles.

A stdio server's sandbox keeps ``--unshare-net``; as a shell command's, its
only way out is the host's egress proxy (the shared mitmproxy server), through
a Unix socket bound in and the forwarder started before the server. Each
server gets an :class:`agent.host.egress.proxy.EgressProxy` of its own,
attached to the shared server with :class:`McpEgressHooks`:

- a request to a host not in the server's ``hosts`` is refused, without asking;
- a request to one of them is refused by a ``net(...)`` deny rule, and
  otherwise allowed (the user named the host when adding the server);
- every decision is audited (``egress_decision``, tool ``mcp``, the server named).

A secret the server needs (``McpSecret``) is granted for the server's own
session (:func:`server_session`, beside the errand's: the agent's own tools
cannot redeem the handle, should the server show it), scoped to its one host
(all methods but ``OPTIONS``, any path), and the server's environment gets
the grant's ``cap_`` handle, never the value: the proxy swaps it on an
in-scope request (:meth:`vault.broker.Broker.redeem_egress`). The grants are
revoked when the server stops.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import McpError, SandboxError
from agent.host.egress.settings import EgressSettings
from agent.host.mcpserver.store import McpServerConfig
from agent.host.policy import Decision, PolicyEngine, ToolCallRequest
from agent.host.tools.net import NET_RULE

if TYPE_CHECKING:
    from agent.host.egress.proxy import EgressChannel, EgressRequest, EgressVerdict

log = logging.getLogger(__name__)

#: The methods a server's grant allows (its host and the rules narrow the rest).
GRANT_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _never() -> bool:
    return False


def _no_record(kind: str, **fields: Any) -> None:
    del kind, fields


@dataclass
class McpNetwork:
    """What the hub needs from the errand host for its servers' network.

    Attributes:
        policy: The session's rules (``net(...)`` rules decide requests).
        record: Appends an audit entry (the host's fail-closed recorder).
        session_id: The session the servers' grants belong to.
        egress: How to build the egress proxy; None: stdio servers get no network.
        broker: Grants and redeems the servers' secrets, redacts responses
            (:class:`vault.broker.Broker`); None: no secret can be given.
        tainted: Whether untrusted content is in the agent's context now.
        ask: Asks the user about a URL server's request the rules would ask
            about: ``(net call, decision) -> allowed``; None: such a request
            is refused, naming the rule that would allow it.
    """

    policy: PolicyEngine
    record: Callable[..., None] = _no_record
    session_id: str = "mcp"
    egress: EgressSettings | None = None
    broker: Any | None = None
    tainted: Callable[[], bool] = _never
    ask: Callable[[ToolCallRequest, Decision], bool] | None = None


def server_session(session_id: str, name: str) -> str:
    """The session a server's grants and proxy session belong to (not the errand's own)."""
    return f"{session_id}/mcp-{name}"


def server_label(name: str) -> str:
    """What the proxy, the rules and the audit log call a server's requests' sender."""
    return f"MCP server {name}"


class McpEgressHooks:
    """The egress proxy's host side for one stdio server: its hosts, the deny rules, the audit.

    Args:
        config: The server.
        network: The rules, taint and audit of the errand host.
    """

    def __init__(self, config: McpServerConfig, network: McpNetwork) -> None:
        self._config = config
        self._network = network

    def decide(self, request: EgressRequest) -> EgressVerdict:
        """Refuse a host the server was not given; otherwise a ``net`` deny rule refuses."""
        from agent.host.egress.proxy import EgressVerdict  # noqa: PLC0415 (mitmproxy on demand)

        config = self._config
        arguments: dict[str, Any] = {
            "command": request.command,
            "host": request.host,
            "method": request.method,
            "path": request.path,
            "capability": request.capability is not None,
        }
        if request.command != server_label(config.name):
            allowed, reason = False, "the connection does not come from this MCP server"
        elif request.host not in config.hosts:
            hosts = ", ".join(config.hosts)
            allowed = False
            reason = f"{request.host} is not a host MCP server {config.name!r} may reach ({hosts})"
        else:
            call = ToolCallRequest(tool=NET_RULE, arguments=arguments)
            decision = self._network.policy.decide(call, tainted=self._network.tainted())
            if decision.action == "deny":
                allowed, reason = False, decision.reason
            else:
                allowed = True
                reason = f"{request.host} is a host of MCP server {config.name!r}"
        self.record(
            "egress_decision",
            tool="mcp",
            decision="allow" if allowed else "deny",
            reason=reason,
            details={**arguments, "server": config.name, "by": "mcp server hosts",
                     "url": f"{request.scheme}://{request.host}:{request.port}{request.path}"},
        )  # fmt: skip
        return EgressVerdict(allowed, reason)

    def record(self, kind: str, **fields: Any) -> None:
        """Append an audit entry through the host's recorder."""
        self._network.record(kind, **fields)


class ServerEgress:
    """One stdio server's way out: its proxy session, its channel and its granted handles.

    Args:
        config: The server (with ``hosts``).
        network: The errand host's part (``egress`` set).
    """

    def __init__(self, config: McpServerConfig, network: McpNetwork) -> None:
        self._config = config
        self._network = network
        self._stack = contextlib.ExitStack()
        self.handles: list[str] = []

    def open(self) -> tuple[EgressChannel, Path, dict[str, str]]:
        """Start the proxy session and the channel, grant the secrets.

        Returns:
            The channel, the forwarder script, and the environment variables
            holding the handles.

        Raises:
            McpError: The proxy did not start, or a secret cannot be granted
                (no vault open, no such secret); the message names it.
        """
        from agent.host.egress.proxy import EgressProxy  # noqa: PLC0415 (mitmproxy on demand)

        config, network = self._config, self._network
        settings = network.egress
        assert settings is not None
        broker = network.broker if hasattr(network.broker, "redeem_egress") else None
        try:
            env = self._grant(broker)
            local = (*settings.local_hosts, *(config.hosts if config.allow_local else ()))
            proxy = EgressProxy(
                McpEgressHooks(config, network),
                broker,
                session_id=server_session(network.session_id, config.name),
                pinned_hosts=settings.pinned_hosts,
                local_hosts=local,
                upstream_ca=settings.upstream_ca,
                resolver=settings.resolver,
            )
            proxy.start()
            self._stack.callback(proxy.close)
            channel = self._stack.enter_context(proxy.channel(server_label(config.name)))
        except SandboxError as e:
            self.close()
            raise McpError(f"the egress proxy did not start: {e}") from e
        except BaseException:
            self.close()
            raise
        return channel, proxy.forwarder, env

    def _grant(self, broker: Any | None) -> dict[str, str]:
        from vault.errors import VaultError
        from vault.grants import CapabilityGrant, header_injection

        config, network = self._config, self._network
        env: dict[str, str] = {}
        for secret in config.secrets:
            if broker is None or not hasattr(broker, "grant"):
                raise McpError(f"MCP server {config.name!r} needs secrets, and no vault is open")
            try:
                info = broker.grant(
                    CapabilityGrant(
                        secret_name=secret.secret,
                        injection=header_injection(secret.inject),
                        methods=GRANT_METHODS,
                        host=secret.host,
                        port=secret.port,
                        session_id=server_session(network.session_id, config.name),
                        approved_by=f"mcp server {config.name}",
                        approved_at=datetime.now(UTC),
                        allow_local=config.allow_local,
                    )
                )
            except VaultError as e:
                raise McpError(f"secret {secret.secret!r} for {secret.env}: {e}") from e
            self.handles.append(info.handle)
            self._stack.callback(_revoke, broker, info.handle)
            env[secret.env] = info.handle
        return env

    def close(self) -> None:
        """Close the channel and the proxy session, revoke the grants."""
        self._stack.close()
        self.handles = []


def _revoke(broker: Any, handle: str) -> None:
    try:
        broker.revoke(handle)
    except Exception as e:  # the grant ends with the session anyway
        log.warning("could not revoke an MCP server's grant: %s", type(e).__name__)
