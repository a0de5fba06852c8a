"""The shell tool: sandboxed by default, refused without bubblewrap unless approved."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ToolDeniedError, ToolError, ToolValidationError
from agent.host.sandbox import Limits, Sandbox
from agent.host.tools.base import ToolContext
from agent.host.tools.registry import run_tool


def _ctx(workspace: Path, sandbox: Sandbox | None, **kw: object) -> ToolContext:
    return ToolContext(
        workspace=workspace,
        session_id="s1",
        sandbox=sandbox,
        limits=Limits(cpu_seconds=5, wall_seconds=20, output_bytes=2000),
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.bwrap
def test_shell_runs_sandboxed(workspace: Path) -> None:
    sandbox = Sandbox.detect()
    if not sandbox.available:
        pytest.skip("no usable bubblewrap")
    out = run_tool("shell", {"command": "echo hello; exit 3"}, _ctx(workspace, sandbox))
    assert out.content == "exit status 3\nhello\n"
    assert out.untrusted and not out.truncated


@pytest.mark.bwrap
def test_shell_timeout_argument_shortens_the_wall_clock(workspace: Path) -> None:
    sandbox = Sandbox.detect()
    if not sandbox.available:
        pytest.skip("no usable bubblewrap")
    out = run_tool("shell", {"command": "sleep 30", "timeout_s": 1}, _ctx(workspace, sandbox))
    assert out.content == "killed: wall-clock limit reached"


def test_shell_without_bwrap_is_refused(workspace: Path) -> None:
    with pytest.raises(ToolDeniedError, match="separate 'run unsandboxed' approval"):
        run_tool("shell", {"command": "echo hi > planted"}, _ctx(workspace, Sandbox(None)))
    assert not (workspace / "planted").exists()


def test_shell_unsandboxed_with_approval_still_scrubs_env(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEYLESS_TEST_TOKEN", "tok-canary-123")
    ctx = _ctx(workspace, Sandbox(None), unsandboxed_approved=True)
    out = run_tool("shell", {"command": "pwd; env"}, ctx)
    assert out.content.startswith("[ran WITHOUT sandbox, approved by the user]\nexit status 0\n")
    assert str(workspace.resolve()) in out.content
    assert "tok-canary-123" not in out.content and "KEYLESS_TEST_TOKEN" not in out.content


def test_shell_unsandboxed_output_is_capped(workspace: Path) -> None:
    ctx = _ctx(workspace, Sandbox(None), unsandboxed_approved=True, output_bytes=1500)
    out = run_tool("shell", {"command": "seq 1 100000"}, ctx)
    assert out.truncated
    assert out.content.count("[truncated output:") == 1
    assert len(out.content.encode()) <= 1500


def test_shell_argument_validation(workspace: Path) -> None:
    ctx = _ctx(workspace, Sandbox(None))
    with pytest.raises(ToolValidationError, match="command: Value error, command must not be"):
        run_tool("shell", {"command": "   "}, ctx)
    with pytest.raises(ToolValidationError, match="timeout_s"):
        run_tool("shell", {"command": "true", "timeout_s": 0}, ctx)
    with pytest.raises(ToolError, match="no shell is configured"):
        run_tool("shell", {"command": "true"}, _ctx(workspace, None))
