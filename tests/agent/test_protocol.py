"""The agent pipe's messages: round trips and every way a line can be refused."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from agent.errors import ProtocolError
from agent.host.tools.registry import offers
from agent.protocol import (
    MAX_LINE,
    PROTOCOL_VERSION,
    AgentErrorMsg,
    Cancel,
    ErrandStats,
    FinalAnswer,
    Hello,
    ModelChunk,
    ModelDone,
    ModelFailed,
    ModelRequest,
    Progress,
    Ready,
    Shutdown,
    Task,
    TokenChunk,
    ToolRequest,
    ToolResult,
    decode,
    encode,
    read_line,
)
from models.interface import GenerationStats, Message, ModelInfo
from vault.handle import CapabilityInfo, new_handle

STATS = GenerationStats(
    n_prompt_tokens=3, n_generated=2, time_to_first_token_s=0.1, tokens_per_second=9.0,
    stop_reason="eos",
)

HOST_MESSAGES = [
    Hello(model_spec={"backend": "llama.cpp", "path": "/m.gguf"}),
    Hello(relayed_model=ModelInfo(name="remote", backend="openai", n_ctx=8192)),
    Task(
        task="list the files",
        memory_context="# USER\nlikes tea",
        capabilities=[
            CapabilityInfo(
                handle=new_handle(),
                description="GET https://api.example.com/*",
                expires_at=datetime(2026, 11, 28, tzinfo=UTC),
                uses_left=3,
            )
        ],
        history=[Message(role="user", content="hi"), Message(role="assistant", content="hello")],
        tools=offers(["list_dir", "read_file"]),
    ),
    ToolResult(call_id="c1", ok=True, content="a.txt\nb.txt", redacted=["TOKEN"]),
    Cancel(),
    Shutdown(),
    ModelChunk(request_id="m1", text="{"),
    ModelDone(request_id="m1", text="{}", stats=STATS),
    ModelFailed(request_id="m1", message="server said 500"),
]

AGENT_MESSAGES = [
    Ready(pid=42, model=ModelInfo(name="fake", backend="fake", n_ctx=4096)),
    TokenChunk(text="tok", step=1),
    Progress(step=1, max_steps=12),
    ToolRequest(call_id="c1", tool="read_file", arguments={"path": "a.txt"}),
    FinalAnswer(
        text="done",
        stats=ErrandStats(steps=2, tool_calls=1, generated_tokens=30, stop_reason="final"),
    ),
    AgentErrorMsg(message="model failed", kind="model"),
    ModelRequest(
        request_id="m1",
        messages=[Message(role="user", content="hi")],
        max_tokens=32,
        json_schema={"type": "object"},
    ),
]


@pytest.mark.parametrize("msg", HOST_MESSAGES, ids=lambda m: m.type)
def test_host_messages_round_trip(msg: object) -> None:
    line = encode(msg)  # type: ignore[arg-type]
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line, sender="host") == msg


@pytest.mark.parametrize("msg", AGENT_MESSAGES, ids=lambda m: m.type)
def test_agent_messages_round_trip(msg: object) -> None:
    line = encode(msg)  # type: ignore[arg-type]
    assert decode(line, sender="agent") == msg


def test_every_line_carries_the_version() -> None:
    assert json.loads(encode(Cancel()))["v"] == PROTOCOL_VERSION


def test_newlines_in_content_stay_inside_one_line() -> None:
    msg = ToolResult(call_id="c1", ok=True, content="line1\nline2\r\n{\"v\":1}")
    line = encode(msg)
    assert line.count(b"\n") == 1
    assert decode(line, sender="host") == msg


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"garbage\n", "not JSON"),
        (b"\xff\xfe\x00\n", "not UTF-8"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"type": "ready", "pid": 1}\n', "protocol version None"),
        (b'{"v": 1, "type": "ready", "pid": 1}\n', "protocol version 1 is not"),
        (b'{"v": 2, "type": "launch_missiles"}\n', "unknown message type 'launch_missiles'"),
        (b'{"v": 2, "type": "task", "task": "x", "tools": []}\n', "may not send a 'task'"),
        (b'{"v": 2, "type": "tool_request", "call_id": "c1"}\n', "tool: Field required"),
        (b'{"v": 2, "type": "ready", "pid": 1, "extra": true}\n', "extra: Extra inputs"),
    ],
)
def test_host_refuses_bad_agent_lines_with_a_clear_message(line: bytes, expected: str) -> None:
    with pytest.raises(ProtocolError, match=expected):
        decode(line, sender="agent")


def test_agent_refuses_agent_messages_from_the_host() -> None:
    with pytest.raises(ProtocolError, match="host may not send a 'tool_request'"):
        decode(encode(AGENT_MESSAGES[3]), sender="host")


def test_capability_handles_are_validated_on_the_pipe() -> None:
    obj = json.loads(encode(HOST_MESSAGES[2]))
    obj["capabilities"][0]["handle"] = "not-a-handle"
    with pytest.raises(ProtocolError, match="capabilities.0.handle"):
        decode(json.dumps(obj).encode(), sender="host")


def test_oversized_lines_are_refused_both_ways() -> None:
    big = ToolResult(call_id="c1", ok=True, content="x" * MAX_LINE)
    with pytest.raises(ProtocolError, match="over the .*-byte line limit"):
        encode(big)
    with pytest.raises(ProtocolError, match="over the .*-byte limit"):
        decode(b" " * (MAX_LINE + 1), sender="agent")


def test_read_line_skips_an_oversized_line_and_resynchronises() -> None:
    stream = io.BytesIO(b"x" * (MAX_LINE + 10) + b"\n" + encode(Cancel()))
    with pytest.raises(ProtocolError, match="over the"):
        read_line(stream)
    line = read_line(stream)
    assert line is not None and decode(line, sender="host") == Cancel()
    assert read_line(stream) is None


def test_read_line_returns_a_last_line_without_newline() -> None:
    stream = io.BytesIO(encode(Cancel()).rstrip(b"\n"))
    line = read_line(stream)
    assert line is not None and decode(line, sender="host") == Cancel()
