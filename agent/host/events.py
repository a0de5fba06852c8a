"""What an errand reports while it runs and how it ended (the GUI and the terminal show them)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agent.protocol import (
    ErrandStats,
)

EventKind = Literal[
    "token",
    "progress",
    "tool_call",
    "decision",
    "tool_result",
    "final",
    "error",
    "agent_crashed",
    "os_isolation",
    "memory_problems",
    "notice",
    "secret_found",
    "egress",
    "model_loaded",
]


@dataclass(frozen=True)
class AgentEvent:
    """Something the GUI or the terminal shows while an errand runs.

    Attributes:
        kind: What happened.
        text: Streamed text (token), the final answer, or a message (error,
            crash, memory problems: what was left out and what to do).
        tool: The tool concerned (tool_call, decision, tool_result).
        call_id: The call concerned.
        data: Details: arguments, decision action and reason, ok/truncated/
            redacted flags, the isolation state, the memory problems. For
            ``egress`` (a request a sandboxed command sent through the egress
            proxy; ``call_id`` is the shell call that made it): ``command``,
            ``host``, ``method``, ``path``, ``decision`` and ``reason``.
    """

    kind: EventKind
    text: str = ""
    tool: str | None = None
    call_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


AgentListener = Callable[[AgentEvent], None]
"""Receives every :class:`AgentEvent`, on the thread that runs the errand."""


class ToolCallRecord(BaseModel):
    """One tool call of an errand, for the summary."""

    model_config = ConfigDict(frozen=True)

    call_id: str
    tool: str
    arguments: dict[str, Any]
    decision: str
    ok: bool
    summary: str
    confidence: float | None = None


Outcome = Literal["final", "finish", "cancelled", "max_steps", "max_tokens", "error", "crashed"]


class ErrandResult(BaseModel):
    """How an errand ended."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    text: str
    tool_calls: list[ToolCallRecord]
    stats: ErrandStats | None = None
    error: str | None = None
