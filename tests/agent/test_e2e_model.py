"""End to end with the real embedded model (llama.cpp) in the real agent process."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.host.errand import AgentHost
from agent.host.events import AgentEvent
from agent.host.policy import PolicyEngine
from agent.protocol import ErrandLimits
from models.factory import ModelSpec
from tests.agent.hostkit import ScriptedAnswerer, Transcript

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(1200)]


def test_the_embedded_model_lists_the_workspace_with_valid_calls(workspace: Path) -> None:
    (workspace / "alpha.txt").write_text("a\n")
    (workspace / "beta.md").write_text("b\n")
    events: list[AgentEvent] = []
    transcript = Transcript()
    host = AgentHost(
        ModelSpec(n_ctx=2048),
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=ScriptedAnswerer(),  # list_dir is allowed by default: no prompt expected
        audit=None,
        session_id="model-test",
        listener=events.append,
        tools=["list_dir"],
        limits=ErrandLimits(max_steps=2, max_tokens_per_step=64),
        transcript=transcript,
    )
    try:
        result = host.run_errand("List the files in the workspace.")
    finally:
        host.close()
    # Whatever the small model chose, every step parsed under the grammar: the
    # errand ended by an answer or the step limit, never by an error or crash.
    assert result.outcome in ("final", "finish", "max_steps"), result.error
    assert any(e.kind == "token" and e.text for e in events)
    ready = [line for line in transcript.received if b'"type":"ready"' in line]
    assert ready and b'"backend":"llama.cpp"' in ready[0]
    # Every call it made was a well-formed list_dir call the host could decide.
    for record in result.tool_calls:
        assert record.tool == "list_dir" and record.decision == "allow"
