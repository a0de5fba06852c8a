"""End to end: a remote model (issue 8) relayed by the host to the isolated agent.

llama-cpp-python's OpenAI-compatible server, started on loopback with an API
key, serves the embedded model. The host opens the remote backend with the key;
the agent process (no network, in bubblewrap where available) gets each
generation through the pipe, and the key never crosses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.host.errand import AgentHost
from agent.host.policy import PolicyEngine
from agent.protocol import ErrandLimits
from models.remote import OpenAIChatModel
from tests.agent.hostkit import ScriptedAnswerer, Transcript
from tests.models.test_remote import API_KEY, MODEL_NAME, _start_server, _stop
from tests.models.test_remote import pytestmark as needs_server

pytestmark = [needs_server, pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, base = _start_server(API_KEY)
    yield base
    _stop(proc)


def test_the_agent_gets_remote_generations_but_never_the_key(workspace: Path, server: str) -> None:
    (workspace / "alpha.txt").write_text("a\n")
    remote = OpenAIChatModel(
        server, MODEL_NAME, api_key_provider=lambda: bytearray(API_KEY.encode()), allow_local=True
    )
    transcript = Transcript()
    host = AgentHost(
        None,
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=ScriptedAnswerer(),
        audit=None,
        session_id="relay-test",
        tools=["list_dir"],
        limits=ErrandLimits(max_steps=2, max_tokens_per_step=48),
        relay_model=remote,
        transcript=transcript,
    )
    try:
        result = host.run_errand("List the files in the workspace.")
    finally:
        host.close()
    assert result.outcome in ("final", "finish", "max_steps"), result.error
    [hello] = transcript.sent_of("hello")
    assert hello["model_spec"] is None and hello["relayed_model"]["backend"] == "openai"
    assert transcript.sent_of("model_done")  # generations came through the host
    for line in transcript.sent + transcript.received:
        assert API_KEY.encode() not in line
    for record in result.tool_calls:
        assert record.tool == "list_dir" and record.decision == "allow"
