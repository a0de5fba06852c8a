"""remember / recall / forget through the real memory service, and finish."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ToolError
from agent.host.ports import MemoryPort
from agent.host.tools.base import ToolContext
from agent.host.tools.registry import run_tool
from memory.service import MemoryService


@pytest.fixture
def memory(tmp_path: Path, workspace: Path) -> Iterator[MemoryService]:
    svc = MemoryService(
        user_dir=tmp_path / "data" / "memory",
        workspace=workspace,
        db_path=tmp_path / "data" / "keyless.db",
        session_id="s1",
        count_tokens=lambda text: len(text.split()),
        scan_secrets=lambda text: ["CANARY"] if "CANARY-7f3a" in text else [],
    )
    yield svc
    svc.close()


def test_memory_service_satisfies_the_port(memory: MemoryService) -> None:
    assert isinstance(memory, MemoryPort)


def test_remember_recall_forget(memory: MemoryService, workspace: Path) -> None:
    ctx = ToolContext(workspace=workspace, session_id="s1", memory=memory)
    out = run_tool(
        "remember", {"topic": "build-steps", "content": "Run `make build` before tests."}, ctx
    )
    assert out.content.startswith("remembered: remember project/build-steps")
    hits = run_tool("recall", {"query": "build"}, ctx)
    assert "build-steps" in hits.content and hits.untrusted
    gone = run_tool("forget", {"topic": "build-steps", "reason": "outdated"}, ctx)
    assert gone.content.startswith("archived: forget project/build-steps")
    assert "nothing in memory" in run_tool("recall", {"query": "zebra"}, ctx).content


def test_remember_refuses_secrets_and_marks_taint(memory: MemoryService, workspace: Path) -> None:
    ctx = ToolContext(workspace=workspace, session_id="s1", memory=memory)
    with pytest.raises(ToolError, match="memory refused the note"):
        run_tool("remember", {"topic": "leak", "content": "key is CANARY-7f3a"}, ctx)
    tainted = ToolContext(workspace=workspace, session_id="s1", memory=memory, tainted=True)
    run_tool("remember", {"topic": "from-web", "content": "The API moved to v2."}, tainted)
    queued = memory.review_queue()
    assert [(item.topic, item.source.trust, item.source.tool) for item in queued] == [
        ("from-web", "untrusted", "remember")
    ]


def test_memory_off_and_finish(workspace: Path) -> None:
    ctx = ToolContext(workspace=workspace, session_id="s1")
    with pytest.raises(ToolError, match="memory is not available"):
        run_tool("recall", {"query": "x"}, ctx)
    out = run_tool("finish", {"answer": "Done: 3 files changed."}, ctx)
    assert out.final and out.content == "Done: 3 files changed." and not out.untrusted
