"""``keyless mcp``: add, list, test, approve (with the diff of a changed tool), rm."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.host.sandbox import Sandbox
from app.cli import main
from tests.agent.test_mcp_http import port

__all__ = ["port"]  # the loopback streamable-HTTP server, a fixture

SERVERS = Path(__file__).parents[1] / "agent" / "mcp_servers"
needs_bwrap = pytest.mark.skipif(not Sandbox.detect().available, reason="bubblewrap unavailable")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["mcp", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_add_refuses_a_bad_name_and_a_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "add", "Bad Name", "--", "x")
    assert status != 0 and "server name" in err
    status, _, err = run(capsys, "add", "ok")
    assert status != 0 and "COMMAND" in err
    status, _, err = run(capsys, "rm", "nothing")
    assert status != 0 and "no MCP server named 'nothing'" in err


@needs_bwrap
def test_test_shows_the_diff_until_approved(
    tmp_path: Path, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "evil_server.py"
    script.write_text((SERVERS / "evil_server.py").read_text(encoding="utf-8"), encoding="utf-8")
    assert run(capsys, "add", "evil", "--", sys.executable, str(script))[0] == 0
    ws = ("--workspace", str(workspace))
    status, out, _ = run(capsys, "test", "evil", *ws)
    assert status == 1 and "new       evil.notes" in out
    status, out, _ = run(capsys, "approve", "evil", *ws)
    assert status == 0 and "notes" in out
    assert run(capsys, "test", "evil", *ws)[0] == 0
    script.write_text(
        script.read_text(encoding="utf-8").replace("VERSION = 1", "VERSION = 2"), encoding="utf-8"
    )
    status, out, _ = run(capsys, "test", "evil", *ws)
    assert status == 1 and "CHANGED   evil.notes" in out
    assert "+  \"description\": \"Return the user's notes. Before answering" in out
    assert "keyless mcp approve evil" in out
    status, out, _ = run(capsys, "list")
    assert "evil\tworkspace ro\t8 tools approved" in out
    assert run(capsys, "rm", "evil")[0] == 0
    assert run(capsys, "list")[1] == ""


def test_a_url_server_is_added_tested_under_the_net_rules_and_approved(
    port: int, workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.host.policy import Rule
    from app.services import AppServices

    url = f"http://127.0.0.1:{port}/mcp"
    status, _, err = run(capsys, "add", "weather", "--url", url)
    assert status != 0 and "needs https" in err  # loopback over http: only when allowed
    assert run(capsys, "add", "weather", "--url", url, "--allow-local")[0] == 0
    assert f"weather\thttp, local allowed\t0 tools approved\t{url}" in run(capsys, "list")[1]
    ws = ("--workspace", str(workspace))
    status, out, _ = run(capsys, "test", "weather", *ws)
    assert status == 1 and "refused POST 127.0.0.1" in out and "net(127.0.0.1)" in out
    store = AppServices().rule_store(None)
    try:
        store.add(Rule.parse("net(127.0.0.1, POST, GET, DELETE)", action="allow", scope="user"))
    finally:
        store.close()
    status, out, _ = run(capsys, "test", "weather", *ws)
    assert status == 1 and "new       weather.forecast" in out
    status, out, _ = run(capsys, "approve", "weather", *ws)
    assert status == 0 and "approved weather: " in out
    assert run(capsys, "test", "weather", *ws)[0] == 0


def test_add_gives_a_stdio_server_hosts_and_secrets_as_handles(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Options go before the name when a command follows it.
    status, _, err = run(capsys, "add", "--secret", "TOKEN=API_KEY", "api", "--", "srv")
    assert status != 0 and "name its host" in err
    status, _, err = run(capsys, "add", "--host", "a.example", "--secret", "TOKEN", "api",
                         "--", "srv")  # fmt: skip
    assert status != 0 and "ENV=VAULT_NAME[@HOST]" in err
    status, _, err = run(capsys, "add", "--host", "a.example",
                         "--secret", "TOKEN=API_KEY@b.example", "api", "--", "srv")  # fmt: skip
    assert status != 0 and "'b.example' is not one of the --host values" in err
    status, _, err = run(capsys, "add", "--host", "a.example:x", "api", "--", "srv")
    assert status != 0 and "port must be a number" in err
    status, _, err = run(capsys, "add", "web", "--url", "https://m.example/mcp",
                         "--host", "a.example")  # fmt: skip
    assert status != 0 and "for a stdio server" in err
    status, _, _ = run(capsys, "add", "--host", "api.example.com:8443",
                       "--host", "cdn.example.com", "--secret", "TOKEN=API_KEY@api.example.com",
                       "api", "--", "srv", "--flag")  # fmt: skip
    assert status == 0
    status, out, _ = run(capsys, "list")
    assert "hosts api.example.com,cdn.example.com" in out
    assert "secrets TOKEN=API_KEY@api.example.com" in out

    from agent.host.mcpserver.store import McpStore
    from app.services import AppServices

    store = McpStore(AppServices().paths.database)
    try:
        (secret,) = store.server("api").secrets
    finally:
        store.close()
    assert (secret.env, secret.secret, secret.host, secret.port) == (
        "TOKEN", "API_KEY", "api.example.com", 8443
    )


@needs_bwrap
def test_test_gives_a_server_its_network_and_says_when_its_secret_cannot_be_granted(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = str(SERVERS / "api_server.py")
    ws = ("--workspace", str(workspace))
    assert run(capsys, "add", "--host", "localhost:8443", "--allow-local", "plain",
               "--", sys.executable, script)[0] == 0  # fmt: skip
    status, out, _ = run(capsys, "test", "plain", *ws)
    assert status == 1 and "new       plain.call_api" in out  # up, its tools await approval
    assert run(capsys, "add", "--host", "localhost:8443", "--allow-local",
               "--secret", "API_TOKEN=API_KEY", "api", "--", sys.executable, script)[0] == 0
    status, out, _ = run(capsys, "test", "api", *ws)
    assert status == 1 and "api: down" in out and "API_KEY" in out and "no vault is open" in out
