"""A stdio MCP server's network: only the egress proxy, its hosts, its secret as a handle.

A real SDK server (``mcp_servers/api_server.py``) in its bubblewrap sandbox
calls a loopback HTTPS API (a trustme CA) through the shared mitmproxy server
with the ``cap_`` handle the host put in its environment; the API receives
the secret, the server and the agent never see it.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent.host.egress.settings import EgressSettings
from agent.host.mcpserver.hub import McpHub
from agent.host.mcpserver.network import McpNetwork
from agent.host.mcpserver.store import McpSecret, McpServerConfig, McpStore
from agent.host.policy import PolicyEngine, Rule
from agent.host.sandbox import Sandbox
from tests.agent.egresskit import https_server
from tests.agent.hostkit import call, final, make_rig
from vault.audit import AuditLog
from vault.broker import Broker
from vault.grants import GrantStore
from vault.keystore import NoKeyring
from vault.store import Argon2Params, Vault

pytestmark = pytest.mark.skipif(
    not Sandbox.detect().available or shutil.which("python3") is None,
    reason="needs bubblewrap",
)

SERVER = Path(__file__).with_name("mcp_servers") / "api_server.py"
SECRET = "sk-live-mcp-server-0123456789abcdef"


class Api(BaseHTTPRequestHandler):
    """Records the Authorization header each request brought; echoes it on /echo."""

    seen: list[str] = []
    lock = threading.Lock()

    def log_message(self, *args: Any) -> None:
        return

    def do_GET(self) -> None:  # noqa: D102 (http.server's contract)
        auth = self.headers.get("Authorization", "")
        with self.lock:
            Api.seen.append(auth)
        body = b"api ok" + (b" auth=" + auth.encode() if self.path == "/echo" else b"")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with https_server(ca, Api) as httpd:
        yield httpd.server_address[1], ca_file


@dataclass
class World:
    port: int
    ca_file: Path
    broker: Broker
    audit: AuditLog
    store: McpStore
    workspace: Path
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def config(self, **kw: Any) -> McpServerConfig:
        values: dict[str, Any] = {
            "name": "api", "command": sys.executable, "args": [str(SERVER)],
            "hosts": ["localhost"], "allow_local": True,
            "secrets": [McpSecret(env="API_TOKEN", secret="API_TOKEN", host="localhost",
                                  port=self.port)],
        }  # fmt: skip
        values.update(kw)
        return McpServerConfig(**values)

    def network(self, *, rules: list[Rule] | None = None, egress: bool = True) -> McpNetwork:
        def record(kind: str, **fields: Any) -> None:
            self.records.append((kind, fields))
            self.audit.record(kind, session_id="mcp-session", **fields)

        settings = EgressSettings(
            upstream_ca=self.ca_file, resolver=lambda host, port: ["127.0.0.1"]
        )
        return McpNetwork(
            policy=PolicyEngine(rules or []), record=record, session_id="mcp-session",
            egress=settings if egress else None, broker=self.broker,
        )  # fmt: skip

    def hub(self, config: McpServerConfig, network: McpNetwork | None) -> McpHub:
        self.store.add(config)
        hub = McpHub(self.store, Sandbox.detect(), workspace=self.workspace, network=network)
        hub.connect()
        hub.approve(config.name)
        return hub


@pytest.fixture
def world(tmp_path: Path, api: tuple[int, Path]) -> Iterator[World]:
    vault = Vault.create(tmp_path / "vault.kls", passphrase="pw", use_keyring=False,
                         keystore=NoKeyring(), idle_timeout=None,
                         kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64))  # fmt: skip
    vault.add("API_TOKEN", SECRET.encode())
    db = tmp_path / "keyless.db"
    audit = AuditLog(db)
    broker = Broker(vault, GrantStore(db), audit, resolver=lambda h, p: ["127.0.0.1"])
    ws = tmp_path / "ws"
    ws.mkdir()
    store = McpStore(db)
    Api.seen.clear()
    try:
        yield World(api[0], api[1], broker, audit, store, ws)
    finally:
        store.close()
        broker.close()


def _text(hub: McpHub, tool: str, **arguments: Any) -> str:
    output, _ = hub.call(f"api.{tool}", arguments)
    return output.content


def test_the_server_reaches_its_host_through_the_proxy_and_the_api_gets_the_secret(
    world: World,
) -> None:
    hub = world.hub(world.config(), world.network())
    try:
        handle = _text(hub, "token")
        answer = _text(hub, "call_api", url=f"https://localhost:{world.port}/data")
        other = _text(hub, "call_api", url=f"https://elsewhere.test:{world.port}/data")
        # The grant is the server's, not the errand session's: the agent's
        # own tools could not redeem the handle.
        assert world.broker.capabilities("mcp-session") == []
        [info] = world.broker.capabilities("mcp-session/mcp-api")
        assert info.handle == handle
    finally:
        hub.close()
    # The server holds a handle, never the secret; the API got the secret.
    assert handle.startswith("cap_") and SECRET not in handle
    assert answer == "200 api ok", answer
    assert Api.seen == [f"Bearer {SECRET}"]
    # Another host is refused by the proxy before anything is sent.
    assert other.startswith("403") and "not a host MCP server 'api' may reach" in other
    decisions = [f for k, f in world.records if k == "egress_decision"]
    assert [(d["decision"], d["details"]["host"]) for d in decisions] == [
        ("allow", "localhost"),
        ("deny", "elsewhere.test"),
    ]
    assert all(d["tool"] == "mcp" and d["details"]["server"] == "api" for d in decisions)
    # The grant ends with the server.
    assert world.broker.capabilities("mcp-session/mcp-api") == []


def test_a_net_deny_rule_refuses_the_servers_own_host(world: World) -> None:
    network = world.network(rules=[Rule.parse("net(localhost)", action="deny")])
    hub = world.hub(world.config(), network)
    try:
        answer = _text(hub, "call_api", url=f"https://localhost:{world.port}/data")
    finally:
        hub.close()
    assert answer.startswith("403") and Api.seen == []


def test_the_server_cannot_reach_the_network_directly(world: World) -> None:
    hub = world.hub(world.config(), world.network())
    try:
        loopback = _text(hub, "connect_directly", host="127.0.0.1", port=world.port)
        public = _text(hub, "connect_directly", host="1.1.1.1", port=443)
    finally:
        hub.close()
    assert loopback.startswith("failed") and public.startswith("failed")


def test_without_the_proxy_the_server_has_no_network_and_no_handle(world: World) -> None:
    hub = world.hub(world.config(), world.network(egress=False))
    try:
        handle = _text(hub, "token")
        answer = _text(hub, "call_api", url=f"https://localhost:{world.port}/data")
    finally:
        hub.close()
    assert handle == "(none)"
    assert answer.startswith("failed") and Api.seen == []


def test_a_secret_the_vault_lacks_reports_the_server_down(world: World) -> None:
    secret = McpSecret(env="API_TOKEN", secret="NO_SUCH", host="localhost", port=world.port)
    world.store.add(world.config(secrets=[secret]))
    hub = McpHub(world.store, Sandbox.detect(), workspace=world.workspace,
                 network=world.network())  # fmt: skip
    try:
        (status,) = hub.connect()
    finally:
        hub.close()
    assert status.state == "down" and "NO_SUCH" in status.reason


def test_through_the_agent_the_secret_never_reaches_the_agent(tmp_path: Path, world: World) -> None:
    world.store.add(world.config())
    hub = McpHub(world.store, Sandbox.detect(), workspace=world.workspace)
    hub.connect()
    hub.approve("api")
    hub.close()
    replies = [
        call("api.call_api", url=f"https://localhost:{world.port}/echo"),
        call("api.token"),
        final("done"),
    ]
    settings = EgressSettings(upstream_ca=world.ca_file, resolver=lambda h, p: ["127.0.0.1"])
    rig = make_rig(
        tmp_path, world.workspace, replies, tools=("read_file",), mcp=hub, broker=world.broker,
        rules=[Rule.parse("mcp(api.*)", action="allow")], egress=settings, isolate=False,
        audit=world.audit, session_id="mcp-session",
    )  # fmt: skip
    try:
        rig.host.start()
        rig.host.run_errand("call the api")
    finally:
        rig.host.close()
    echoed, handle = [e.text for e in rig.events if e.kind == "tool_result"][:2]
    assert Api.seen == [f"Bearer {SECRET}"]
    assert "api ok auth=Bearer [REDACTED" in echoed, echoed
    assert re.search(r"cap_[0-9a-f]{32}", handle), handle
    # The canary: the secret is in nothing the agent process was sent.
    assert not any(SECRET.encode() in line for line in rig.transcript.sent)
    assert "egress_decision" in rig.audit_kinds()


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        (
            {"hosts": [], "secrets": [{"env": "T", "secret": "S", "host": "a.example"}]},
            "is not one of the server's hosts",
        ),
        (
            {
                "hosts": ["a.example"],
                "secrets": [{"env": "1X", "secret": "S", "host": "a.example"}],
            },
            "not an environment variable name",
        ),
        ({"hosts": ["a.example/x"]}, "is not a host name"),
        (
            {
                "hosts": ["a.example"],
                "secrets": [
                    {"env": "T", "secret": "S", "host": "a.example"},
                    {"env": "T", "secret": "R", "host": "a.example"},
                ],
            },
            "same environment variable",
        ),
        (
            {
                "hosts": ["a.example"],
                "secrets": [{"env": "T", "secret": "S", "host": "a.example", "inject": "no colon"}],
            },
            "Header-Name: template",
        ),
    ],
)
def test_bad_hosts_and_secrets_are_refused_with_the_reason(
    fields: dict[str, Any], problem: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=problem):
        McpServerConfig(name="api", command="x", **fields)


def test_a_server_that_does_not_start_gives_up_its_grant(world: World) -> None:
    world.store.add(world.config(args=["-c", "raise SystemExit(3)"]))
    hub = McpHub(world.store, Sandbox.detect(), workspace=world.workspace,
                 network=world.network(), start_timeout=10)  # fmt: skip
    try:
        (status,) = hub.connect()
        assert status.state == "down"
        assert world.broker.capabilities("mcp-session/mcp-api") == []
    finally:
        hub.close()


def test_a_server_without_hosts_gets_no_network_even_with_the_proxy(world: World) -> None:
    hub = world.hub(world.config(hosts=[], secrets=[], allow_local=False), world.network())
    try:
        handle = _text(hub, "token")
        answer = _text(hub, "call_api", url=f"https://localhost:{world.port}/data")
    finally:
        hub.close()
    assert handle == "(none)" and answer.startswith("failed") and Api.seen == []
    assert [k for k, _ in world.records if k == "egress_decision"] == []
