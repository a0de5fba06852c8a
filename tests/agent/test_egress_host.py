"""The egress proxy wired into the agent host: real agent process, bubblewrap, mitmproxy, curl.

The host starts one proxy per session on the first shell call; a request no
``net`` rule decides becomes a permission prompt for tool ``net`` (host,
method, path, the command that asked); decisions and requests go to the
host's audit log; closing the host stops the proxy.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent.host.egress.settings import EgressSettings
from agent.host.permission import PermissionAnswer
from agent.host.policy import Rule
from agent.host.sandbox import Sandbox
from tests.agent.egresskit import https_server
from tests.agent.hostkit import Rig, call, final, make_rig

pytestmark = pytest.mark.skipif(
    not Sandbox.detect().available or shutil.which("curl") is None,
    reason="needs bubblewrap and curl",
)


class Hello(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        return

    def do_GET(self) -> None:  # noqa: D102 (http.server's contract)
        body = b"hello from upstream"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with https_server(ca, Hello) as httpd:
        yield httpd.server_address[1], ca_file


def _rig(tmp_path: Path, upstream: tuple[int, Path], commands: list[str], **kw: Any) -> Rig:
    port, ca_file = upstream
    ws = tmp_path / "ws"
    ws.mkdir()
    replies = [call("shell", command=c.format(port=port)) for c in commands] + [final("done")]
    settings = EgressSettings(
        local_hosts=("localhost",), upstream_ca=ca_file, resolver=lambda h, p: ["127.0.0.1"]
    )
    rules = [Rule.parse("shell(curl *)", action="allow"), *kw.pop("rules", [])]
    return make_rig(tmp_path, ws, replies, tools=("shell",), rules=rules, egress=settings,
                    isolate=False, **kw)


def _results(rig: Rig) -> list[str]:
    return [e.text for e in rig.events if e.kind == "tool_result"]


def test_a_request_no_rule_decides_asks_as_net_and_runs_once_allowed(
    tmp_path: Path, upstream: tuple[int, Path]
) -> None:
    rig = _rig(tmp_path, upstream, ["curl -sS https://localhost:{port}/hi?q=1"],
               answers=[PermissionAnswer(choice="once")])
    try:
        rig.host.start()
        rig.host.run_errand("fetch")
        proxy = rig.host._egress
        assert proxy is not None and proxy.running
    finally:
        rig.host.close()
    assert not proxy.running  # closing the host stops the session's proxy
    [asked] = rig.prompt.asked
    assert asked.tool == "net" and asked.effect == "egress"
    assert asked.arguments["host"] == "localhost" and asked.arguments["method"] == "GET"
    assert asked.arguments["path"] == "/hi"
    assert asked.arguments["command"].startswith("curl -sS https://localhost:")
    assert str(asked.suggested_rule) == "net(localhost)"
    assert any("hello from upstream" in text for text in _results(rig))
    kinds = rig.audit_kinds()
    assert "egress_started" in kinds and "egress_decision" in kinds and "egress_request" in kinds


def test_a_denied_request_gets_403_and_session_answer_saves_a_net_rule(
    tmp_path: Path, upstream: tuple[int, Path]
) -> None:
    commands = [f"curl -sS https://localhost:{{port}}/{p}" for p in "abc"]
    rig = _rig(tmp_path, upstream, commands, answers=[
        PermissionAnswer(choice="deny", reason="not now"),
        PermissionAnswer(choice="session"),
    ])
    try:
        rig.host.start()
        rig.host.run_errand("fetch thrice")
    finally:
        rig.host.close()
    first, second, third = _results(rig)[:3]
    assert "Keyless egress refused this request" in first and "hello" not in first
    assert "hello from upstream" in second and "hello from upstream" in third
    assert len(rig.prompt.asked) == 2  # the third request followed the session rule
    assert any(str(r) == "net(localhost)" for r in rig.policy.rules)


def test_a_net_deny_rule_refuses_without_asking(tmp_path: Path, upstream: tuple[int, Path]) -> None:
    rig = _rig(tmp_path, upstream, ["curl -sS https://localhost:{port}/x"],
               rules=[Rule.parse("net(localhost)", action="deny")])
    try:
        rig.host.start()
        rig.host.run_errand("fetch")
    finally:
        rig.host.close()
    assert rig.prompt.asked == []
    assert "Keyless egress refused this request" in _results(rig)[0]


def test_without_egress_settings_a_shell_command_has_no_network(
    tmp_path: Path, upstream: tuple[int, Path]
) -> None:
    port, _ = upstream
    ws = tmp_path / "ws"
    ws.mkdir()
    rig = make_rig(tmp_path, ws, [call("shell", command=f"curl -sS https://localhost:{port}/"),
                                  final("done")], tools=("shell",), isolate=False,
                   rules=[Rule.parse("shell(curl *)", action="allow")])
    try:
        rig.host.start()
        rig.host.run_errand("fetch")
    finally:
        rig.host.close()
    assert rig.host._egress is None
    assert "hello" not in _results(rig)[0]



def test_the_terminal_prompt_shows_a_net_request_and_the_command_that_asked() -> None:
    import io

    from agent.host.permission import PermissionRequest
    from agent.host.policy import Rule as PolicyRule
    from app.terminal_prompt import TerminalPrompt

    out = io.StringIO()
    prompt = TerminalPrompt(io.StringIO("o\n"), out)
    answer = prompt.ask(PermissionRequest(
        tool="net", effect="egress", reason="default for egress calls", tainted=False,
        arguments={"command": "git push origin main", "host": "github.com", "method": "POST",
                   "path": "/me/repo.git/git-receive-pack", "capability": True},
        suggested_rule=PolicyRule.parse("net(github.com)", action="allow"),
    ))
    text = out.getvalue()
    assert answer.choice == "once"
    assert "POST github.com/me/repo.git/git-receive-pack" in text
    assert "asked by: git push origin main" in text
    assert "capability handle" in text and "net(github.com)" in text
