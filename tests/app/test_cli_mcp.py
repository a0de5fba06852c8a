"""``keyless mcp``: add, list, test, approve (with the diff of a changed tool), rm."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.host.sandbox import Sandbox
from app.cli import main

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
