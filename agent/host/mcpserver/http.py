"""MCP servers over streamable HTTP, reached from the host under the ``net(...)`` rules.

A URL server runs elsewhere; the host talks to it with the ``mcp`` SDK's
streamable-HTTP client over an ``httpx`` transport of ours
(:class:`CheckedTransport`) that, for every request the SDK sends:

1. resolves the host and checks *every* address as the broker and the
   egress proxy do (:func:`vault.urls.check_addresses`): loopback and private
   addresses are refused unless the server's config allows a local server;
   link-local (cloud metadata), multicast and reserved ones never pass;
2. asks the ``net`` decider: the same ``net(host, METHODS)`` rules that
   decide a sandboxed command's requests through the egress proxy
   (:func:`policy_net_decider`);
3. connects to the address it checked, not to a second DNS answer (the name
   stays in the ``Host`` header and, for https, in the TLS server name).

A refused request fails the connection (the server is reported down, with the
reason); nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from agent.errors import McpError
from agent.host.mcpserver.connection import CALL_TIMEOUT_S, START_TIMEOUT_S, McpConnection
from agent.host.policy import PolicyEngine, ToolCallRequest
from agent.host.tools.net import NET_RULE

Resolver = Callable[[str, int], Sequence[str]]


@dataclass(frozen=True)
class NetRequest:
    """One request to an MCP server as the ``net`` rules see it."""

    server: str
    host: str
    method: str
    path: str


NetDecider = Callable[[NetRequest], tuple[bool, str]]
"""Decides one request: ``(allowed, reason)``. Called on the connection's thread."""


class McpNetworkRefusedError(McpError):
    """The network rules or the address check refused a request to an MCP server."""


def refuse_all(request: NetRequest) -> tuple[bool, str]:
    """The decider when no rules were given: nothing goes out."""
    return False, f"no network rules were given for MCP server {request.server!r}"


def policy_net_decider(
    policy: PolicyEngine,
    *,
    tainted: Callable[[], bool] = lambda: False,
    ask: Callable[[ToolCallRequest, Any], bool] | None = None,
    record: Callable[..., None] | None = None,
) -> NetDecider:
    """Decide MCP requests with the policy's ``net(...)`` rules, as the egress proxy does.

    The request is the same ``net`` call a sandboxed command's request is
    (host, method, path; the command says which MCP server sent it), so a
    ``net(api.example.com)`` rule decides both.

    Args:
        policy: The rules (deny > ask > allow; a ``net`` request with no rule asks).
        tainted: Whether untrusted content is in the agent's context now.
        ask: Asks the user when the rules say "ask": ``(call, decision) -> allowed``
            (the errand host's permission prompt). None: "ask" refuses, and
            the reason names the rule that would allow it.
        record: Appends an audit entry; each decision is recorded as an
            ``egress_decision`` of tool ``mcp`` (None: not audited).
    """

    def decide(request: NetRequest) -> tuple[bool, str]:
        arguments: dict[str, Any] = {
            "host": request.host,
            "method": request.method,
            "path": request.path,
            "command": f"MCP server {request.server}",
            "capability": False,
        }
        call = ToolCallRequest(tool=NET_RULE, arguments=arguments)
        decision = policy.decide(call, tainted=tainted())
        by = "policy"
        if decision.action == "allow":
            allowed, reason = True, decision.reason
        elif decision.action == "ask" and ask is not None:
            by = "user"
            allowed = ask(call, decision)
            verb = "allowed" if allowed else "denied"
            reason = f"{verb} by the user ({decision.reason})"
        elif decision.action == "ask":
            allowed = False
            reason = f"{decision.reason}; a rule net({request.host}) allows it"
        else:
            allowed, reason = False, decision.reason
        if record is not None:
            record(
                "egress_decision",
                tool="mcp",
                decision="allow" if allowed else "deny",
                reason=reason,
                details={**arguments, "server": request.server, "by": by},
            )
        return allowed, reason

    return decide


class CheckedTransport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport that checks each request's addresses and rules, then pins it.

    Args:
        server: The MCP server's name (for the rules and messages).
        decide: The ``net`` decider.
        allow_local: Whether loopback and private addresses may be reached.
        resolver: Host name to address strings (tests pin one); None: the system's.
        inner: The transport that sends (default: a plain ``httpx`` one).
        record: Appends an audit entry: a request the address check refuses is
            recorded as an ``egress_decision`` (tool ``mcp``, ``by`` address
            check); the rules' decisions are the decider's to record.
    """

    def __init__(
        self,
        server: str,
        decide: NetDecider,
        *,
        allow_local: bool = False,
        resolver: Resolver | None = None,
        inner: httpx.AsyncBaseTransport | None = None,
        record: Callable[..., None] | None = None,
    ) -> None:
        self._server = server
        self._decide = decide
        self._record = record
        self._allow_local = allow_local
        self._resolver = resolver
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Check, decide, pin and send one request.

        Raises:
            McpNetworkRefusedError: The address or the rules refused it.
        """
        from vault.errors import GrantRefused
        from vault.urls import check_addresses, resolve, system_resolver

        url = request.url
        host = url.host.lower().rstrip(".")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            resolver = self._resolver or system_resolver
            addresses = await asyncio.to_thread(resolve, host, port, resolver)
            address = check_addresses(host, addresses, allow_local=self._allow_local)
        except GrantRefused as e:
            if self._record is not None:
                await asyncio.to_thread(
                    self._record,
                    "egress_decision",
                    tool="mcp",
                    decision="deny",
                    reason=f"{host}: {e.reason}",
                    details={"server": self._server, "host": host, "method": request.method,
                             "path": url.path, "command": f"MCP server {self._server}",
                             "by": "address check"},
                )  # fmt: skip
            raise self._refused(f"{host}: {e.reason}") from e
        path = url.raw_path.decode("ascii", errors="replace")
        allowed, reason = await asyncio.to_thread(
            self._decide, NetRequest(self._server, host, request.method, path)
        )
        if not allowed:
            raise self._refused(f"{request.method} {host}: {reason}")
        # Connect to the address checked; the name stays in Host and the TLS server name.
        literal = f"[{address}]" if address.version == 6 else str(address)
        request.url = url.copy_with(host=literal)
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._inner.aclose()

    def _refused(self, reason: str) -> McpNetworkRefusedError:
        return McpNetworkRefusedError(f"MCP server {self._server!r}: refused {reason}")


class McpHttpConnection(McpConnection):
    """A streamable-HTTP MCP server, reached through a :class:`CheckedTransport`.

    Args:
        name: The server's name.
        url: Its endpoint.
        decide: The ``net`` decider.
        allow_local: Whether the URL may reach this machine or the LAN.
        resolver: Host name to addresses (tests); None: the system's.
        tls: The TLS context to verify https servers with (tests trust their
            own CA); None: the system's trust store.
        start_timeout: Seconds to connect and list tools.
        call_timeout: Seconds one call may take.
        record: Appends an audit entry (address-check refusals).
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        decide: NetDecider,
        allow_local: bool = False,
        resolver: Resolver | None = None,
        tls: ssl.SSLContext | None = None,
        start_timeout: float = START_TIMEOUT_S,
        call_timeout: float = CALL_TIMEOUT_S,
        record: Callable[..., None] | None = None,
    ) -> None:
        super().__init__(
            name, [], env={}, start_timeout=start_timeout, call_timeout=call_timeout
        )
        self.url = url
        inner = httpx.AsyncHTTPTransport(verify=tls) if tls is not None else None
        self.transport = CheckedTransport(
            name, decide, allow_local=allow_local, resolver=resolver, inner=inner, record=record
        )

    @contextlib.asynccontextmanager
    async def _streams(self) -> AsyncIterator[tuple[Any, Any]]:
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        template = create_mcp_http_client()
        timeout = template.timeout
        await template.aclose()
        async with (
            httpx.AsyncClient(transport=self.transport, timeout=timeout) as client,
            streamable_http_client(self.url, http_client=client) as (read, write, _),
        ):
            yield read, write
