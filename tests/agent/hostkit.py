"""Shared pieces of the host and end-to-end tests: a scripted answerer and a host factory."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.host.errand import AgentHost
from agent.host.events import AgentEvent
from agent.host.permission import PermissionAnswer, PermissionRequest
from agent.host.policy import PolicyEngine, Rule
from vault.audit import AuditLog

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")


def call(tool: str, **arguments: object) -> str:
    """A scripted model reply that calls ``tool``."""
    return json.dumps({"tool": tool, "arguments": arguments})


def final(text: str) -> str:
    """A scripted model reply that ends the errand."""
    return json.dumps({"final": text})


@dataclass
class ScriptedAnswerer:
    """A PermissionPrompt that answers from a list and records what it was asked."""

    answers: list[PermissionAnswer] = field(default_factory=list)
    asked: list[PermissionRequest] = field(default_factory=list)
    before_answer: Callable[[PermissionRequest], None] | None = None
    decide: Callable[[PermissionRequest], PermissionAnswer] | None = None
    """Answers every request once the scripted answers are used up."""

    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        self.asked.append(request)
        if self.before_answer is not None:
            self.before_answer(request)
        if not self.answers and self.decide is not None:
            return self.decide(request)
        if not self.answers:
            raise AssertionError(f"unexpected permission prompt: {request}")
        return self.answers.pop(0)


@dataclass
class Transcript:
    """Every line the host sent to and received from the agent process."""

    sent: list[bytes] = field(default_factory=list)
    received: list[bytes] = field(default_factory=list)

    def __call__(self, direction: str, line: bytes) -> None:
        (self.sent if direction == "sent" else self.received).append(line)

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        objs = [json.loads(line) for line in self.sent]
        return [o for o in objs if o["type"] == kind]


@dataclass
class Rig:
    """A host and everything a test looks at."""

    host: AgentHost
    prompt: ScriptedAnswerer
    events: list[AgentEvent]
    transcript: Transcript
    audit: AuditLog
    policy: PolicyEngine

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events if e.kind not in ("token", "progress")]

    def audit_kinds(self) -> list[str]:
        return [e.kind for e in reversed(self.audit.entries())]


def write_script(path: Path, replies: Sequence[str]) -> Path:
    path.write_text(json.dumps(list(replies)), encoding="utf-8")
    return path


def fake_agent_argv(tmp_path: Path, plan: list[dict[str, Any]]) -> list[str]:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    return [sys.executable, str(FAKE_AGENT), str(plan_file)]


def one_message_plan(msg: dict[str, Any], *, tool_calls: int) -> list[dict[str, Any]]:
    """A fake agent's plan: start, send ``msg`` after the task, end the errand after the answer."""
    stats = {"steps": 1, "tool_calls": tool_calls, "generated_tokens": 1, "stop_reason": "final"}
    return [
        {"op": "ready"},
        {"op": "read"},
        {"op": "send", "msg": msg},
        {"op": "read"},
        {"op": "send", "msg": {"v": 2, "type": "final", "text": "x", "stats": stats}},
        {"op": "hang"},
    ]


def make_rig(
    tmp_path: Path,
    workspace: Path,
    replies: Sequence[str] = (),
    *,
    answers: Iterable[PermissionAnswer] = (),
    rules: Iterable[Rule] = (),
    tools: Sequence[str] = ("list_dir", "read_file", "write_file", "http_request"),
    **kwargs: Any,
) -> Rig:
    events: list[AgentEvent] = []
    on_event: Callable[[AgentEvent], None] | None = kwargs.pop("on_event", None)

    def listener(event: AgentEvent) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    transcript = Transcript()
    prompt = ScriptedAnswerer(list(answers))
    audit: AuditLog = kwargs.pop("audit", None) or AuditLog(tmp_path / "keyless.db")
    policy = PolicyEngine(list(rules))
    kwargs.setdefault("broker", None)
    if "worker_argv" not in kwargs:
        kwargs.setdefault("scripted_model", write_script(tmp_path / "script.json", replies))
    host = AgentHost(
        None,
        workspace=workspace,
        memory=kwargs.pop("memory", None),
        policy=policy,
        prompt=prompt,
        audit=audit,
        session_id=kwargs.pop("session_id", "session-1"),
        listener=listener,
        tools=tools,
        transcript=transcript,
        **kwargs,
    )
    return Rig(host, prompt, events, transcript, audit, policy)
