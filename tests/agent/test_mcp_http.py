"""Streamable-HTTP MCP servers: a real SDK server on loopback, reached under the net(...) rules."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import ValidationError

from agent.host.mcpserver.http import NetRequest, policy_net_decider
from agent.host.mcpserver.hub import McpHub
from agent.host.mcpserver.network import McpNetwork
from agent.host.mcpserver.store import McpServerConfig, McpStore
from agent.host.policy import PolicyEngine, Rule
from agent.host.sandbox import Sandbox

SERVER = Path(__file__).with_name("mcp_servers") / "http_server.py"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


HubMaker = Callable[..., McpHub]


@pytest.fixture
def hub_for(tmp_path: Path) -> Iterator[HubMaker]:
    hubs: list[McpHub] = []

    def make(config: McpServerConfig, rules: list[Rule], **kwargs: object) -> McpHub:
        store = McpStore(tmp_path / "keyless.db")
        store.add(config)
        kwargs.setdefault("net_decider", policy_net_decider(PolicyEngine(rules)))
        hub = McpHub(
            store, Sandbox.detect(), workspace=tmp_path, start_timeout=10,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.close()
        hub.store.close()


def allow(pattern: str) -> Rule:
    return Rule.parse(f"net({pattern})", action="allow")


def test_a_url_server_allowed_by_a_net_rule_is_pinned_and_called(
    port: int, hub_for: HubMaker
) -> None:
    config = McpServerConfig(name="weather", url=f"http://127.0.0.1:{port}/mcp", allow_local=True)
    hub = hub_for(config, [allow("127.0.0.1")])
    (status,) = hub.connect()
    assert status.state == "pending" and status.check is not None
    assert sorted(t.name for t in status.check.new) == ["add", "forecast"]
    assert hub.offers() == []  # nothing offered before the user approves
    hub.approve("weather")
    assert sorted(o.name for o in hub.offers()) == ["weather.add", "weather.forecast"]
    output, ok = hub.call("weather.forecast", {"city": "Oslo"})
    assert ok and output.content == "Oslo: sunny, 21 °C" and output.untrusted
    assert hub.call("weather.add", {"a": 2, "b": 40})[0].content == "42"


def test_without_a_rule_the_request_is_refused_and_says_which_rule_allows_it(
    port: int, hub_for: HubMaker
) -> None:
    config = McpServerConfig(name="weather", url=f"http://127.0.0.1:{port}/mcp", allow_local=True)
    (status,) = hub_for(config, []).connect()
    assert status.state == "down"
    assert "refused POST 127.0.0.1" in status.reason and "net(127.0.0.1)" in status.reason


def test_a_deny_rule_wins_over_an_allow_rule(port: int, hub_for: HubMaker) -> None:
    config = McpServerConfig(name="weather", url=f"http://127.0.0.1:{port}/mcp", allow_local=True)
    rules = [allow("127.0.0.1"), Rule.parse("net(127.0.0.1)", action="deny")]
    (status,) = hub_for(config, rules).connect()
    assert status.state == "down" and "refused POST 127.0.0.1" in status.reason


def test_loopback_is_refused_unless_the_server_allows_a_local_address(
    port: int, hub_for: HubMaker
) -> None:
    # An https URL whose name resolves to loopback: the address check refuses it
    # before any rule is asked, as the broker refuses a grant's local address.
    config = McpServerConfig(name="sneaky", url=f"https://mcp.example.test:{port}/mcp")
    records: list[tuple[str, dict[str, Any]]] = []
    network = McpNetwork(
        policy=PolicyEngine([allow("mcp.example.test")]),
        record=lambda kind, **fields: records.append((kind, fields)),
    )
    hub = hub_for(
        config, [], resolver=lambda host, port: ["127.0.0.1"], network=network
    )
    (status,) = hub.connect()
    assert status.state == "down"
    assert "private or loopback" in status.reason and "127.0.0.1" in status.reason
    # The refusal is audited like a rule's, naming the address check.
    [(kind, fields)] = records
    assert kind == "egress_decision" and fields["decision"] == "deny"
    assert fields["details"]["by"] == "address check" and "loopback" in fields["reason"]


def test_a_name_is_connected_at_the_address_that_was_checked(port: int, hub_for: HubMaker) -> None:
    asked: list[NetRequest] = []
    rules = PolicyEngine([allow("weather.test")])
    decide = policy_net_decider(rules)

    def recording(request: NetRequest) -> tuple[bool, str]:
        asked.append(request)
        return decide(request)

    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    config = McpServerConfig(
        name="weather", url=f"http://weather.test:{port}/mcp", allow_local=True
    )
    hub = hub_for(config, [], resolver=resolver, net_decider=recording)
    (status,) = hub.connect()
    # weather.test exists only in this resolver: reaching the server proves the
    # connection went to the checked address, not to a second lookup.
    assert status.state == "pending", status.reason
    assert {r.host for r in asked} == {"weather.test"} and set(resolved) == {"weather.test"}
    assert {r.method for r in asked} >= {"POST"} and asked[0].path == "/mcp"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"url": "http://93.184.216.34/mcp"}, "needs https"),
        ({"url": "ftp://127.0.0.1/mcp", "allow_local": True}, "must be http\\(s\\)"),
        ({"url": "https://u:p@h.example/mcp"}, "must not carry credentials"),
        ({"url": "https://h.example/mcp", "command": "x"}, "not both"),
        ({}, "not both"),
        ({"url": "https://h.example/mcp", "args": ["-v"]}, "no arguments"),
        ({"command": "x", "allow_local": True}, "a URL server or a server with hosts"),
    ],
)
def test_bad_url_configs_are_refused_with_the_reason(
    fields: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        McpServerConfig(name="s", **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext]]:
    """The server over https, its certificate for weather.test from a test CA."""
    ca = trustme.CA()
    pem = tmp_path_factory.mktemp("tls") / "weather.pem"
    ca.issue_cert("weather.test").private_key_and_cert_chain_pem.write_to_path(str(pem))
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), str(pem)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline()), trust
    finally:
        proc.kill()
        proc.wait()


def test_https_is_verified_against_the_name_while_connecting_to_the_checked_address(
    tls_server: tuple[int, ssl.SSLContext], hub_for: HubMaker
) -> None:
    tls_port, trust = tls_server

    def local(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    good = McpServerConfig(
        name="weather", url=f"https://weather.test:{tls_port}/mcp", allow_local=True
    )
    hub = hub_for(good, [allow("weather.test")], resolver=local, tls=trust)
    (status,) = hub.connect()
    assert status.state == "pending", status.reason
    # Another name at the same address: the certificate does not match it.
    other = McpServerConfig(
        name="other", url=f"https://other.test:{tls_port}/mcp", allow_local=True
    )
    hub = hub_for(other, [allow("other.test")], resolver=local, tls=trust)
    (status,) = hub.connect(["other"])  # the store is shared: weather is there too
    assert status.state == "down" and "certificate" in status.reason.lower()


def _approved_store(tmp_path: Path, config: McpServerConfig) -> McpStore:
    store = McpStore(tmp_path / "keyless.db")
    store.add(config)
    hub = McpHub(store, Sandbox.detect(), workspace=tmp_path,
                 net_decider=policy_net_decider(PolicyEngine([allow("127.0.0.1")])))  # fmt: skip
    hub.connect()
    hub.approve(config.name)
    hub.close()
    return store


@pytest.mark.parametrize("choice", ["session", "deny"])
def test_in_an_errand_a_request_the_rules_ask_about_goes_to_the_hosts_prompt(
    tmp_path: Path, port: int, choice: str
) -> None:
    from agent.host.permission import PermissionAnswer
    from tests.agent.hostkit import call, final, make_rig

    config = McpServerConfig(name="weather", url=f"http://127.0.0.1:{port}/mcp", allow_local=True)
    store = _approved_store(tmp_path, config)
    hub = McpHub(store, Sandbox.detect(), workspace=tmp_path, start_timeout=10)
    ws = tmp_path / "ws"
    ws.mkdir()
    rig = make_rig(
        tmp_path, ws, [call("weather.forecast", city="Oslo"), final("done")],
        tools=("read_file",), mcp=hub, answers=[PermissionAnswer(choice=choice)],
        rules=[Rule.parse("mcp(weather.*)", action="allow")],
    )  # fmt: skip
    try:
        rig.host.start()
        rig.host.run_errand("weather?")
    finally:
        rig.host.close()
        store.close()
    asked = rig.prompt.asked[0]
    assert asked.tool == "net" and asked.effect == "egress"
    assert asked.arguments["command"] == "MCP server weather"
    assert asked.arguments["host"] == "127.0.0.1" and asked.arguments["method"] == "POST"
    assert str(asked.suggested_rule) == "net(127.0.0.1)"
    assert len(rig.prompt.asked) == 1  # "session" added the rule; "deny" stopped the server
    results = [e.text for e in rig.events if e.kind == "tool_result"]
    decisions = list(reversed(rig.audit.entries("egress_decision")))
    assert decisions and all(e.tool == "mcp" for e in decisions)
    if choice == "session":
        assert any("Oslo: sunny" in r for r in results), results
        assert decisions[0].decision == "allow" and decisions[0].details["by"] == "user"
        assert all(d.decision == "allow" for d in decisions)
    else:
        assert not any("Oslo" in r for r in results)
        assert [d.decision for d in decisions] == ["deny"]
        assert "mcp_server_down" in rig.audit_kinds()
