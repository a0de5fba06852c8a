"""A session's KV state saved when its host closes and restored when it is reopened,
through the real path (AgentHost, the agent process in its sandbox, the embedded model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.host.errand import AgentHost
from agent.host.events import AgentEvent, ErrandResult
from agent.host.policy import PolicyEngine
from agent.protocol import ErrandLimits
from models.factory import ModelSpec
from models.interface import Message
from models.kvstate import ModelHashes, StateStore
from tests.agent.hostkit import ScriptedAnswerer

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(600)]

N_CTX = 512
SESSION = "kv-session"


def _host(
    workspace: Path, store: StateStore, events: list[AgentEvent], n_ctx: int = N_CTX
) -> AgentHost:
    return AgentHost(
        ModelSpec(n_ctx=n_ctx, n_threads=1),
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=ScriptedAnswerer(),
        audit=None,
        session_id=SESSION,
        listener=events.append,
        tools=["list_dir"],
        limits=ErrandLimits(max_steps=1, max_tokens_per_step=24),
        kv_store=store,
        model_hashes=ModelHashes(store.directory / "model-hashes.json"),
    )


def _first_session(workspace: Path, store: StateStore) -> tuple[list[Message], ErrandResult]:
    host = _host(workspace, store, [])
    try:
        first = host.run_errand("Say hello to the user.")
        history = host.history
    finally:
        host.close()  # leaving the session saves its state
    assert first.stats is not None, first.error
    return history, first


def _reopen(
    workspace: Path, store: StateStore, history: list[Message], n_ctx: int = N_CTX
) -> tuple[ErrandResult, list[AgentEvent]]:
    events: list[AgentEvent] = []
    host = _host(workspace, store, events, n_ctx)
    try:
        host.replace_history(history)
        result = host.run_errand("Now say goodbye.")
    finally:
        host.close()
    assert result.stats is not None, result.error
    return result, events


def _notices(events: list[AgentEvent]) -> list[str]:
    return [e.text for e in events if e.kind == "notice"]


def test_a_reopened_session_continues_from_its_saved_state(
    workspace: Path, tmp_path: Path
) -> None:
    store = StateStore(tmp_path / "kvstate", cap_bytes=1 << 30)
    history, first = _first_session(workspace, store)
    assert store.path_for(SESSION).is_file()
    assert first.stats is not None and first.stats.evaluated_tokens > 200
    resumed, events = _reopen(workspace, store, history)
    assert _notices(events) == []
    assert resumed.stats is not None
    # Only the new task and the step's output: the instructions and the first
    # errand came back from disk instead of being evaluated again.
    assert resumed.stats.evaluated_tokens < first.stats.evaluated_tokens / 3, (
        first.stats,
        resumed.stats,
    )


@pytest.mark.parametrize(
    "damage", ["corrupt", "truncated", "stale history", "other n_ctx"]
)
def test_an_unusable_state_is_reported_once_and_the_session_reprefills(
    workspace: Path, tmp_path: Path, damage: str
) -> None:
    store = StateStore(tmp_path / "kvstate", cap_bytes=1 << 30)
    history, first = _first_session(workspace, store)
    path = store.path_for(SESSION)
    data = bytearray(path.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) - 1000]))
    elif damage == "stale history":
        history = [*history[:-1], Message(role="assistant", content="something else")]
    # A model setting changed since the state was saved: it applies now.
    n_ctx = 640 if damage == "other n_ctx" else N_CTX
    resumed, events = _reopen(workspace, store, history, n_ctx)
    notices = _notices(events)
    assert len(notices) == 1, notices
    expected = {
        "corrupt": "checksum",
        "truncated": "truncated",
        "stale history": "conversation",
        "other n_ctx": "saved for 512, now 640",
    }
    assert expected[damage] in notices[0] and "evaluated again" in notices[0]
    # Nothing lost: the errand ran, with the whole conversation evaluated again.
    assert resumed.outcome in ("final", "finish", "max_steps")
    assert resumed.stats is not None and first.stats is not None
    assert resumed.stats.evaluated_tokens > 200
