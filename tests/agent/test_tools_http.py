"""The http_request tool: through the broker, refusals as denials, results untrusted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ToolDeniedError, ToolError, ToolValidationError
from agent.ports import BrokerPort
from agent.tools.base import ToolContext
from agent.tools.registry import run_tool
from vault.broker import BrokeredResponse, HttpCall
from vault.errors import GrantRefused
from vault.handle import CapabilityInfo

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


class FakeBroker:
    """Records calls; answers like the real broker (redacted body, names of secrets)."""

    def __init__(self, *, refuse: str | None = None, body: str = "ok") -> None:
        self.calls: list[tuple[str | None, Any, str, datetime]] = []
        self.refuse = refuse
        self.body = body

    def call(
        self, handle: str | None, call: Any, *, session_id: str, now: datetime
    ) -> BrokeredResponse:
        self.calls.append((handle, call, session_id, now))
        if self.refuse:
            raise GrantRefused(self.refuse)
        return BrokeredResponse(
            status=200,
            headers={"content-type": "application/json", "set-cookie": "x"},
            body=self.body,
            truncated=False,
            redacted=["GITHUB_TOKEN"] if "[REDACTED" in self.body else [],
            url=call.url,
        )

    def capabilities(self, session_id: str) -> Sequence[CapabilityInfo]:
        return []


def _ctx(workspace: Path, broker: BrokerPort | None) -> ToolContext:
    return ToolContext(workspace=workspace, session_id="s1", broker=broker, now=lambda: NOW)


def test_fake_broker_satisfies_the_port() -> None:
    assert isinstance(FakeBroker(), BrokerPort)


def test_request_goes_through_the_broker_with_the_handle(workspace: Path) -> None:
    broker = FakeBroker(body='{"login": "me", "token": "[REDACTED:GITHUB_TOKEN]"}')
    out = run_tool(
        "http_request",
        {"url": "https://api.github.com/user", "capability": "cap_abc", "headers": {"X-A": "1"}},
        _ctx(workspace, broker),
    )
    handle, call, session, now = broker.calls[0]
    assert handle == "cap_abc" and session == "s1" and now == NOW
    assert isinstance(call, HttpCall)
    assert (call.method, call.url, call.headers, call.body) == (
        "GET", "https://api.github.com/user", {"X-A": "1"}, None,
    )  # fmt: skip
    assert out.content.startswith("HTTP 200\ncontent-type: application/json\n\n{")
    assert "set-cookie" not in out.content
    assert out.untrusted and out.redacted == ["GITHUB_TOKEN"]


def test_broker_refusal_becomes_a_denial(workspace: Path) -> None:
    broker = FakeBroker(refuse="host evil.example is outside the grant")
    with pytest.raises(ToolDeniedError, match="broker refused the request: host evil.example"):
        run_tool(
            "http_request",
            {"url": "https://evil.example/x", "capability": "cap_abc"},
            _ctx(workspace, broker),
        )


def test_large_response_is_truncated_with_marker(workspace: Path) -> None:
    broker = FakeBroker(body="y" * 100_000)
    out = run_tool("http_request", {"url": "https://example.com/"}, _ctx(workspace, broker))
    assert out.truncated and "[truncated response:" in out.content


def test_no_broker_and_bad_arguments(workspace: Path) -> None:
    with pytest.raises(ToolError, match="no vault broker"):
        run_tool("http_request", {"url": "https://example.com/"}, _ctx(workspace, None))
    with pytest.raises(ToolValidationError, match="url must start with https://"):
        run_tool("http_request", {"url": "file:///etc/passwd"}, _ctx(workspace, FakeBroker()))
    with pytest.raises(ToolValidationError, match="method"):
        run_tool(
            "http_request",
            {"url": "https://example.com/", "method": "CONNECT"},
            _ctx(workspace, FakeBroker()),
        )
