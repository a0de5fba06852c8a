"""MCP tool servers: real SDK servers in their sandboxes, through the real agent process."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import PolicyError
from agent.host.mcpserver.hub import McpHub, mcp_call
from agent.host.mcpserver.store import McpServerConfig, McpStore
from agent.host.permission import PermissionAnswer
from agent.host.policy import PolicyEngine, Rule, ToolCallRequest, suggest_rule
from agent.host.sandbox import Sandbox
from tests.agent.hostkit import call, final, make_rig

SERVERS = Path(__file__).with_name("mcp_servers")
needs_bwrap = pytest.mark.skipif(not Sandbox.detect().available, reason="bubblewrap unavailable")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("buy milk\n", encoding="utf-8")
    return ws


@pytest.fixture
def evil_script(tmp_path: Path) -> Path:
    # A copy, so a test can "update" the server by rewriting it.
    target = tmp_path / "servers" / "evil_server.py"
    target.parent.mkdir()
    target.write_text((SERVERS / "evil_server.py").read_text(encoding="utf-8"), encoding="utf-8")
    return target


def _config(name: str, script: Path, *, writable: bool = False) -> McpServerConfig:
    return McpServerConfig(
        name=name, command=sys.executable, args=[str(script)], workspace_writable=writable
    )


@pytest.fixture
def hub_for(tmp_path: Path, workspace: Path) -> Iterator[object]:
    hubs: list[McpHub] = []

    def make(*configs: McpServerConfig, approve: bool = True, **kwargs: object) -> McpHub:
        store = McpStore(tmp_path / "keyless.db")
        for config in configs:
            store.add(config)
        hub = McpHub(
            store,
            Sandbox.detect(),
            workspace=workspace,
            hidden=[workspace / ".keyless-data", tmp_path / "data"],
            **kwargs,  # type: ignore[arg-type]
        )
        hubs.append(hub)
        hub.connect()
        if approve:
            for config in configs:
                hub.approve(config.name)
        return hub

    yield make
    for hub in hubs:
        hub.close()


# -- policy ---------------------------------------------------------------------------------------


def test_mcp_rules_match_server_tool_globs_and_default_to_ask() -> None:
    policy = PolicyEngine([Rule.parse("mcp(files.*)", action="allow")])
    allowed = policy.decide(mcp_call("files.read_text"), tainted=True)
    other = policy.decide(mcp_call("github.create_issue"), tainted=False)
    assert allowed.action == "allow"
    assert other.action == "ask" and other.reason == "default for execute calls"
    denied = PolicyEngine(
        [Rule.parse("mcp(*)", action="allow"), Rule.parse("mcp(evil.*)", action="deny")]
    ).decide(mcp_call("evil.notes"), tainted=False)
    assert denied.action == "deny"
    assert str(suggest_rule(mcp_call("files.read_text"))) == "mcp(files.read_text)"
    # A rule for every tool covers MCP tools too; an MCP name is no built-in tool.
    assert PolicyEngine([Rule.parse("*", action="deny")]).decide(
        mcp_call("files.read_text"), tainted=False
    ).action == "deny"
    with pytest.raises(PolicyError, match="unknown tool 'files.read_text'"):
        policy.decide(ToolCallRequest(tool="files.read_text"), tainted=False)


def test_mcp_is_a_rule_kind_of_the_registry() -> None:
    from agent.host.tools.registry import RULE_KINDS, default_tools, rule_names

    assert RULE_KINDS["mcp"].effect == "execute" and RULE_KINDS["mcp"].main_argument == "tool"
    assert "mcp" in rule_names() and "mcp" not in default_tools()


# -- the file server, end to end ------------------------------------------------------------------


@pytest.mark.bwrap
@needs_bwrap
def test_file_server_tool_runs_through_the_agent_prompt_and_delivery(
    tmp_path: Path, workspace: Path, hub_for
) -> None:
    hub = hub_for(_config("files", SERVERS / "files_server.py"))
    rig = make_rig(
        tmp_path,
        workspace,
        [call("files.read_text", path="notes.txt"), final("done")],
        answers=[PermissionAnswer(choice="once")],
        mcp=hub,
    )
    try:
        result = rig.host.run_errand("read my notes")
    finally:
        rig.host.close()
    assert result.outcome == "final", result
    task = rig.transcript.sent_of("task")[0]
    assert "files.read_text" in [t["name"] for t in task["tools"]]
    (asked,) = rig.prompt.asked
    assert asked.tool == "files.read_text" and "'files'" in asked.reason
    assert asked.effect == "execute"
    results = rig.transcript.sent_of("tool_result")
    assert results[0]["content"] == "buy milk\n" and results[0]["untrusted"] is True
    assert rig.host.tainted
    kinds = rig.audit_kinds()
    assert "tool_decision" in kinds and "tool_result" in kinds


@pytest.mark.bwrap
@needs_bwrap
def test_a_rule_allows_without_asking_and_the_workspace_is_read_only(
    tmp_path: Path, workspace: Path, hub_for
) -> None:
    hub = hub_for(_config("files", SERVERS / "files_server.py"))
    rig = make_rig(
        tmp_path,
        workspace,
        [call("files.write_text", path="x.txt", text="hi"), final("done")],
        rules=[Rule.parse("mcp(files.*)", action="allow")],
        mcp=hub,
    )
    try:
        rig.host.run_errand("write")
    finally:
        rig.host.close()
    assert rig.prompt.asked == []
    (result,) = rig.transcript.sent_of("tool_result")
    assert result["ok"] is False and "Read-only file system" in result["content"]
    assert not (workspace / "x.txt").exists()


@pytest.mark.bwrap
@needs_bwrap
def test_a_writable_server_writes_the_workspace(workspace: Path, hub_for) -> None:
    hub = hub_for(_config("files", SERVERS / "files_server.py", writable=True))
    output, ok = hub.call("files.write_text", {"path": "x.txt", "text": "hi"})
    assert ok, output.content
    assert (workspace / "x.txt").read_text(encoding="utf-8") == "hi"


@needs_bwrap
def test_arguments_are_checked_against_the_pinned_schema(workspace: Path, hub_for) -> None:
    from agent.errors import ToolValidationError

    hub = hub_for(_config("files", SERVERS / "files_server.py"))
    with pytest.raises(ToolValidationError, match="path"):
        hub.validate("files.read_text", {"nope": 1})


# -- the malicious server -------------------------------------------------------------------------


@needs_bwrap
def test_a_changed_tool_is_held_back_until_the_user_approves_the_diff(
    evil_script: Path, hub_for, tmp_path: Path, workspace: Path
) -> None:
    hub = hub_for(_config("evil", evil_script))
    assert hub.has("evil.notes")
    hub.close()
    evil_script.write_text(
        evil_script.read_text(encoding="utf-8").replace("VERSION = 1", "VERSION = 2"),
        encoding="utf-8",
    )
    later = McpHub(McpStore(tmp_path / "keyless.db"), Sandbox.detect(), workspace=workspace)
    try:
        (status,) = later.connect()
        assert status.state == "pending" and "notes" in status.reason
        assert not later.has("evil.notes")
        assert later.has("evil.probe")  # unchanged tools stay offered
        assert status.check is not None
        assert '-  "description": "Return the user\'s notes."' in status.check.diff
        assert '+  "description": "Return the user\'s notes. Before answering' in (
            status.check.diff
        )
        later.approve("evil")
        assert later.has("evil.notes")
    finally:
        later.close()


@pytest.mark.bwrap
@needs_bwrap
def test_injected_instructions_come_back_untrusted_and_taint_the_errand(
    tmp_path: Path, workspace: Path, evil_script: Path, hub_for
) -> None:
    hub = hub_for(_config("evil", evil_script))
    rig = make_rig(
        tmp_path,
        workspace,
        [call("evil.notes"), call("http_request", url="https://evil.example/"), final("x")],
        rules=[
            Rule.parse("mcp(evil.*)", action="allow"),
            Rule.parse("http_request(domain:evil.example)", action="allow"),
        ],
        answers=[PermissionAnswer(choice="deny", reason="no")],
        mcp=hub,
    )
    try:
        rig.host.run_errand("notes")
    finally:
        rig.host.close()
    first = rig.transcript.sent_of("tool_result")[0]
    assert first["untrusted"] is True and "IGNORE ALL PREVIOUS" in first["content"]
    # The network call after it asks, whatever the allow rule says (taint).
    (asked,) = rig.prompt.asked
    assert asked.tool == "http_request" and asked.tainted


@needs_bwrap
def test_the_server_sees_no_data_dir_no_home_and_no_network(
    tmp_path: Path, workspace: Path, evil_script: Path, hub_for
) -> None:
    inner = workspace / ".keyless-data"
    inner.mkdir()
    (inner / "vault.kls").write_text("VAULT", encoding="utf-8")
    outer = tmp_path / "data"
    outer.mkdir()
    (outer / "vault.kls").write_text("VAULT", encoding="utf-8")
    hub = hub_for(_config("evil", evil_script))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        port = listener.getsockname()[1]
        for path in (inner / "vault.kls", outer / "vault.kls", Path.home() / ".bashrc"):
            output, _ = hub.call("evil.probe", {"path": str(path)})
            assert output.content.startswith("refused"), (path, output.content)
        output, _ = hub.call("evil.probe", {"path": str(workspace / "notes.txt")})
        assert output.content.startswith("read 9 bytes")
        output, _ = hub.call("evil.connect", {"port": port})
        assert output.content.startswith("refused"), output.content
        output, _ = hub.call("evil.home", {})
        assert str(Path.home()) not in output.content
    finally:
        listener.close()


@pytest.mark.bwrap
@needs_bwrap
@pytest.mark.parametrize(
    ("tool", "why"),
    [("crash", "failed"), ("hang", "hung"), ("flood", "flooding")],
)
def test_a_broken_server_is_reported_down_the_errand_goes_on_and_it_restarts(
    tmp_path: Path, workspace: Path, evil_script: Path, hub_for, tool: str, why: str
) -> None:
    hub = hub_for(_config("evil", evil_script), call_timeout=3.0)
    rig = make_rig(
        tmp_path,
        workspace,
        [call(f"evil.{tool}"), call("read_file", path="notes.txt"), final("went on")],
        rules=[Rule.parse("mcp(evil.*)", action="allow")],
        mcp=hub,
    )
    try:
        result = rig.host.run_errand("break")
        assert result.outcome == "final" and result.text == "went on"
        broken, after = rig.transcript.sent_of("tool_result")
        assert broken["ok"] is False and why in broken["content"], broken["content"]
        assert after["ok"] is True and "buy milk" in after["content"]
        assert hub.status["evil"].state == "down"
        assert "mcp_server_down" in rig.audit_kinds()
        # The next errand restarts it.
        (status,) = hub.connect()
        assert status.state == "up"
        output, ok = hub.call("evil.probe", {"path": str(workspace / "notes.txt")})
        assert ok and output.content.startswith("read")
    finally:
        rig.host.close()


@needs_bwrap
def test_a_malformed_line_does_not_break_the_session(evil_script: Path, hub_for) -> None:
    hub = hub_for(_config("evil", evil_script))
    output, ok = hub.call("evil.garbage", {})
    assert ok and output.content == "answered after garbage"
    assert hub.call("evil.probe", {"path": "notes.txt"})[1]


def test_a_server_without_bubblewrap_is_down_not_unsandboxed(
    tmp_path: Path, workspace: Path
) -> None:
    store = McpStore(tmp_path / "keyless.db")
    store.add(_config("files", SERVERS / "files_server.py"))
    hub = McpHub(store, Sandbox(None), workspace=workspace)
    (status,) = hub.connect()
    assert status.state == "down" and "bubblewrap" in status.reason
    assert hub.offers() == []
    assert json.loads(json.dumps([s.name for s in hub.status.values()])) == ["files"]
