"""The http_request tool: through the broker, refusals as denials, results untrusted."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ToolDeniedError, ToolError, ToolValidationError
from agent.host.ports import BrokerPort
from agent.host.tools.base import ToolContext
from agent.host.tools.registry import run_tool
from vault._crypto import Argon2Params
from vault.audit import AuditLog
from vault.broker import Broker, BrokeredResponse, HttpCall
from vault.errors import BrokerRequestError, GrantRefused, RedactionError, VaultError
from vault.grants import CapabilityGrant, GrantStore, QueryInjection
from vault.handle import CapabilityInfo
from vault.keystore import NoKeyring
from vault.redact import secret_forms
from vault.store import Vault

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


class FakeBroker:
    """Records calls; answers like the real broker (redacted body, names of secrets)."""

    def __init__(
        self, *, refuse: str | None = None, body: str = "ok", fail: VaultError | None = None
    ) -> None:
        self.calls: list[tuple[str | None, Any, str, datetime]] = []
        self.refuse = refuse
        self.body = body
        self.fail = fail

    def call(
        self, handle: str | None, call: Any, *, session_id: str, now: datetime
    ) -> BrokeredResponse:
        self.calls.append((handle, call, session_id, now))
        if self.refuse:
            raise GrantRefused(self.refuse)
        if self.fail is not None:
            raise self.fail
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


# ------------------------------------------------- broker failures (fail closed)

SECRET = b"sk-live-http-tool-9f8e7d6c5b4a"


def _no_secret(text: str) -> None:
    for form in secret_forms(SECRET):
        assert form not in text, "a form of the secret leaked"


def test_redaction_failure_returns_nothing_of_the_response(workspace: Path) -> None:
    # Whatever the broker put in the error (here a stand-in for response text)
    # stays out of what the model sees.
    broker = FakeBroker(fail=RedactionError("cannot redact: BODY-MARKER-4711"))
    with pytest.raises(ToolError) as info:
        run_tool("http_request", {"url": "https://example.com/"}, _ctx(workspace, broker))
    assert not isinstance(info.value, ToolDeniedError)
    assert "nothing of it is returned" in str(info.value)
    assert "BODY-MARKER-4711" not in str(info.value)
    assert len(broker.calls) == 1


def test_request_failure_becomes_a_tool_error(workspace: Path) -> None:
    broker = FakeBroker(fail=BrokerRequestError("request to api.example.com failed: ReadTimeout"))
    with pytest.raises(ToolError, match="request to api.example.com failed: ReadTimeout") as info:
        run_tool("http_request", {"url": "https://api.example.com/"}, _ctx(workspace, broker))
    assert not isinstance(info.value, ToolDeniedError)


@pytest.fixture
def real_vault(tmp_path: Path) -> Iterator[Vault]:
    vault = Vault.create(
        tmp_path / "vault.kls",
        passphrase="correct horse",
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    )
    vault.add("API_KEY", SECRET)
    yield vault
    vault.lock()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield int(sock.getsockname()[1])
    sock.close()


def _real_broker(vault: Vault, tmp_path: Path) -> tuple[Broker, AuditLog, GrantStore]:
    db = tmp_path / "keyless.db"
    grants, audit = GrantStore(db), AuditLog(db)
    broker = Broker(vault, grants, audit, local_hosts=("127.0.0.1",), timeout=5.0)
    return broker, audit, grants


def _grant(port: int) -> CapabilityGrant:
    return CapabilityGrant(
        secret_name="API_KEY",
        injection=QueryInjection(param="key"),  # the secret would be in the URL
        methods=("GET",),
        host="127.0.0.1",
        port=port,
        path_pattern="/v1/*",
        max_uses=3,
        session_id="s1",
        approved_by="test",
        approved_at=NOW,
        allow_local=True,
    )


def test_real_broker_connection_refused_is_a_tool_error_without_the_secret(
    workspace: Path, tmp_path: Path, real_vault: Vault, closed_port: int
) -> None:
    broker, audit, grants = _real_broker(real_vault, tmp_path)
    handle = broker.grant(_grant(closed_port), now=NOW).handle
    with pytest.raises(ToolError) as info:
        run_tool(
            "http_request",
            {"url": f"https://127.0.0.1:{closed_port}/v1/items", "capability": handle},
            _ctx(workspace, broker),
        )
    error = info.value
    assert not isinstance(error, ToolDeniedError)
    assert str(error).startswith("http_request failed: request to 127.0.0.1 failed: ConnectError")
    assert isinstance(error.__cause__, BrokerRequestError)
    assert error.__cause__.__cause__ is None and error.__cause__.__context__ is None
    _no_secret(str(error))
    _no_secret(str(error.__cause__))
    # The use was spent before the call, as the broker promises.
    record = grants.get(handle)
    assert record is not None and record.uses_left == 2
    # The spent use is accounted for in the audit log, without the secret.
    failed, granted = audit.entries()
    assert (failed.kind, granted.kind) == ("request_failed", "grant")
    assert failed.reason is not None and failed.reason.startswith(
        "request to 127.0.0.1 failed: ConnectError"
    )
    assert failed.details["handle"] == handle
    _no_secret(failed.model_dump_json())
    assert audit.verify().ok
    broker.close()


def test_real_broker_with_a_locked_vault_fails_closed(
    workspace: Path, tmp_path: Path, real_vault: Vault, closed_port: int
) -> None:
    broker, audit, grants = _real_broker(real_vault, tmp_path)
    handle = broker.grant(_grant(closed_port), now=NOW).handle
    real_vault.lock()
    url = f"https://127.0.0.1:{closed_port}/v1/items"
    # With the handle: the secret cannot be read, so the call is not made.
    with pytest.raises(ToolError, match="the vault could not serve the request: .*locked"):
        run_tool("http_request", {"url": url, "capability": handle}, _ctx(workspace, broker))
    record = grants.get(handle)
    assert record is not None and record.uses_left == 3  # a locked vault costs no use
    # Without a handle: the session's secrets cannot be read to redact the
    # response, so the broker refuses to return anything at all.
    with pytest.raises(ToolError, match="nothing of it is returned") as info:
        run_tool("http_request", {"url": url}, _ctx(workspace, broker))
    assert isinstance(info.value.__cause__, RedactionError)
    assert [e.kind for e in audit.entries()] == ["grant"]
    broker.close()
