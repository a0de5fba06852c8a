"""The broker against a real HTTPS server on loopback (trustme CA) and a mock transport."""

from __future__ import annotations

import base64
import json
import re
import secrets
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import trustme

from vault._crypto import Argon2Params
from vault.audit import AuditLog
from vault.broker import Broker, BrokeredResponse, HttpCall, SecretSource, is_auth_header
from vault.errors import (
    GrantRefused,
    RedactionError,
    SecretNotFoundError,
    VaultError,
    VaultLockedError,
)
from vault.grants import (
    BasicAuthInjection,
    CapabilityGrant,
    GrantStore,
    QueryInjection,
    header_injection,
)
from vault.handle import new_handle
from vault.keystore import NoKeyring
from vault.redact import secret_forms
from vault.store import Vault

SECRET = b"sk-live-" + b"Zq9+/x7Yw3=Kp0v" + b"LmN4rT8uQ2sEj6h"  # base64-hostile chars
OTHER = b"ghp_otherSecretValue0123456789abcdef"
NOW = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


# --------------------------------------------------------------------- server


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes


@dataclass
class ServerState:
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> list[Seen]:
        with self.lock:
            out, self.requests = self.requests, []
        return out


def _presented_secret(seen: Seen) -> bytes:
    auth = seen.headers.get("authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].encode()
    if auth.startswith("Basic "):
        return base64.b64decode(auth[6:]).split(b":", 1)[1]
    if "key" in seen.query:
        return seen.query["key"][0].encode()
    return seen.headers.get("x-api-key", "").encode()


def _every_encoding(value: bytes) -> list[str]:
    text = value.decode()
    return [
        text,
        base64.b64encode(value).decode(),
        base64.urlsafe_b64encode(value).decode().rstrip("="),
        base64.b64encode(b"x" + value).decode(),  # alignment 1
        base64.b64encode(b"xy" + value + b"z").decode(),  # alignment 2
        base64.urlsafe_b64encode(b"prefix:" + value).decode(),
        quote(text, safe=""),
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(text, safe="")),
        value.hex(),
        value.hex().upper(),
    ]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _record(self) -> Seen:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        seen = Seen(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            raw_headers=list(self.headers.items()),
            body=body,
        )
        with self.state.lock:
            self.state.requests.append(seen)
        return seen

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              pieces: int = 0) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            if pieces:
                for i in range(0, len(body), pieces):
                    self.wfile.write(body[i : i + pieces])
                    self.wfile.flush()
            else:
                self.wfile.write(body)
        except (ConnectionError, ssl.SSLError):
            pass  # the broker stopped reading at its size limit

    def _handle(self) -> None:
        seen = self._record()
        route = seen.path
        if route.startswith("/api/echo") or route.startswith("/v1/"):
            payload = {
                "method": seen.method,
                "path": seen.path,
                "query": seen.query,
                "headers": seen.headers,
                "body": seen.body.decode("latin-1"),
            }
            self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        elif route == "/api/reflect":
            value = _presented_secret(seen)
            body = "\n".join(_every_encoding(value)).encode()
            self._send(200, body, {"Content-Type": "text/plain", "X-Echo": value.decode()},
                       pieces=int(seen.query.get("pieces", ["0"])[0]))
        elif route == "/api/redirect":
            target = seen.query["to"][0]
            code = int(seen.query.get("code", ["302"])[0])
            self._send(code, b"", {"Location": target})
        elif route == "/api/loop":
            n = int(seen.query["n"][0])
            stop = int(seen.query.get("stop", ["1000"])[0])
            if n >= stop:
                self._send(200, f"stopped after {n}".encode())
            else:
                self._send(302, b"", {"Location": f"/api/loop?n={n + 1}&stop={stop}"})
        elif route == "/api/big":
            n = int(seen.query["n"][0])
            tail = _presented_secret(seen) if "tail" in seen.query else b""
            self._send(200, b"a" * n + tail, {"Content-Type": "text/plain"}, pieces=4096)
        else:
            self._send(404, b"not found")

    do_GET = do_POST = do_DELETE = do_PUT = _handle


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server(ca: trustme.CA) -> Iterator[ServerState]:
    state = ServerState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # No IP in the certificate: the broker connects to 127.0.0.1 but must verify
    # the name (SNI + hostname check), so an IP-only check would fail here.
    ca.issue_cert("localhost", "other.test").configure_cert(ctx)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


# ------------------------------------------------------------------- fixtures


class DictSource:
    """A minimal SecretSource, the same members as vault.store.Vault."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values
        self.locked = False
        self.handed_out: list[bytearray] = []

    @property
    def is_locked(self) -> bool:
        return self.locked

    def names(self) -> list[str]:
        if self.locked:
            raise VaultLockedError("locked")
        return sorted(self.values)

    def get(self, name: str) -> bytearray:
        if self.locked:
            raise VaultLockedError("locked")
        if name not in self.values:
            raise SecretNotFoundError(name)
        out = bytearray(self.values[name])
        self.handed_out.append(out)
        return out


def static_resolver(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise GrantRefused(f"address: cannot resolve {host}")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


RESOLVER_TABLE = {
    "localhost": ["127.0.0.1"],
    "other.test": ["127.0.0.1"],
    "api.example.com": ["93.184.216.34"],
    "mixed.example.com": ["93.184.216.34", "10.1.2.3"],
    "meta.example.com": ["169.254.169.254"],
}


@dataclass
class Env:
    broker: Broker
    grants: GrantStore
    audit: AuditLog
    source: SecretSource
    server: ServerState
    db: Path

    def grant(self, **overrides: Any) -> str:
        base: dict[str, Any] = {
            "secret_name": "API_KEY",
            "injection": header_injection("Authorization: Bearer {}"),
            "methods": ["GET", "POST"],
            "host": "localhost",
            "port": self.server.port,
            "path_pattern": "/api/*",
            "expires_at": NOW + timedelta(hours=1),
            "max_uses": 50,
            "session_id": "s1",
            "approved_by": "tester",
            "approved_at": NOW,
            "allow_local": True,
        }
        base.update(overrides)
        return self.broker.grant(CapabilityGrant(**base), now=NOW).handle

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.server.port}{path}"

    def call(self, handle: str | None, path: str, *, method: str = "GET",
             headers: dict[str, str] | None = None, session_id: str = "s1",
             now: datetime = NOW, body: str | None = None) -> BrokeredResponse:
        return self.broker.call(
            handle,
            HttpCall(method=method, url=self.url(path), headers=headers or {}, body=body),
            session_id=session_id,
            now=now,
        )


def _make_source(kind: str, tmp_path: Path) -> SecretSource:
    if kind == "dict":
        return DictSource({"API_KEY": SECRET, "OTHER": OTHER})
    vault = Vault.create(
        tmp_path / "vault.kls",
        passphrase="correct horse",
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    )
    vault.add("API_KEY", SECRET)
    vault.add("OTHER", OTHER)
    return vault


def _env(source: SecretSource, server: ServerState, ca: trustme.CA, tmp_path: Path,
         **kwargs: Any) -> Iterator[Env]:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    db = tmp_path / "keyless.db"
    grants = GrantStore(db)
    audit = AuditLog(db)
    broker = Broker(
        source,
        grants,
        audit,
        transport=httpx.HTTPTransport(verify=ctx, retries=0),
        resolver=kwargs.pop("resolver", static_resolver(RESOLVER_TABLE)),
        **kwargs,
    )
    server.take()
    yield Env(broker, grants, audit, source, server, db)
    broker.close()
    grants.close()
    audit.close()


@pytest.fixture(params=["dict", "vault"])
def env(request: pytest.FixtureRequest, server: ServerState, ca: trustme.CA,
        tmp_path: Path) -> Iterator[Env]:
    """A broker over the in-test source and over the real encrypted Vault."""
    yield from _env(_make_source(request.param, tmp_path), server, ca, tmp_path)


@pytest.fixture
def denv(server: ServerState, ca: trustme.CA, tmp_path: Path) -> Iterator[Env]:
    """A broker over the in-test source only (for the many scope cases)."""
    yield from _env(_make_source("dict", tmp_path), server, ca, tmp_path)


def assert_no_secret(text: str, value: bytes = SECRET) -> None:
    for form in secret_forms(value):
        assert form not in text, f"secret form {form[:4]}... leaked"


# ---------------------------------------------------------------- injection


def test_header_injection_reaches_server_and_the_echo_is_redacted(env: Env) -> None:
    handle = env.grant()
    response = env.call(handle, "/api/echo?x=1")
    [seen] = env.server.take()
    assert seen.headers["authorization"] == "Bearer " + SECRET.decode()
    assert seen.headers["host"] == f"localhost:{env.server.port}"
    assert response.status == 200
    assert "[REDACTED:API_KEY]" in response.body
    assert_no_secret(response.body)
    assert response.redacted == ["API_KEY"]
    assert json.loads(response.body)["headers"]["authorization"] == "Bearer [REDACTED:API_KEY]"


def test_query_injection_replaces_any_agent_value(denv: Env) -> None:
    handle = denv.grant(injection=QueryInjection(param="key"))
    response = denv.call(handle, "/api/echo?key=agent-guess&k%65y=smuggled&x=1")
    [seen] = denv.server.take()
    assert seen.query["key"] == [SECRET.decode()]
    assert seen.query["x"] == ["1"]
    assert "authorization" not in seen.headers
    assert_no_secret(response.body)
    assert "agent-guess" not in response.body and "smuggled" not in response.body


def test_basic_auth_injection(denv: Env) -> None:
    handle = denv.grant(injection=BasicAuthInjection(username="bot"))
    response = denv.call(handle, "/api/echo")
    [seen] = denv.server.take()
    scheme, token = seen.headers["authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token) == b"bot:" + SECRET
    # The echoed base64 of "bot:<secret>" is redacted too (alignment-shifted base64).
    assert_no_secret(response.body)
    assert response.redacted == ["API_KEY"]


def test_custom_header_injection(denv: Env) -> None:
    handle = denv.grant(injection=header_injection("X-Api-Key: {}"))
    denv.call(handle, "/api/echo", headers={"x-api-key": "agent-made-up"})
    [seen] = denv.server.take()
    assert seen.headers["x-api-key"] == SECRET.decode()
    assert [k for k, _ in seen.raw_headers if k.lower() == "x-api-key"] == ["X-Api-Key"]


def test_agent_supplied_auth_headers_are_stripped(denv: Env) -> None:
    handle = denv.grant()
    agent_headers = {
        "authorization": "Bearer from-the-agent",
        "Proxy-Authorization": "Basic eHg6eXk=",
        "Cookie": "session=abc",
        "X-Api-Key": "k",
        "X-Auth-Token": "t",
        "Host": "evil.example",
        "Accept": "application/json",
        "X-Custom": "kept",
    }
    response = denv.call(handle, "/api/echo", headers=agent_headers)
    [seen] = denv.server.take()
    assert seen.headers["authorization"] == "Bearer " + SECRET.decode()
    assert seen.headers["host"] == f"localhost:{denv.server.port}"
    for name in ("proxy-authorization", "cookie", "x-api-key", "x-auth-token"):
        assert name not in seen.headers
    assert seen.headers["accept"] == "application/json"
    assert seen.headers["x-custom"] == "kept"
    assert "from-the-agent" not in response.body
    [entry] = denv.audit.entries("redeem")
    assert set(entry.details["stripped_headers"]) == {
        "authorization", "proxy-authorization", "cookie", "x-api-key", "x-auth-token", "host"
    }


def test_is_auth_header() -> None:
    for name in ("Authorization", "X-Goog-Api-Key", "x-amz-security-token", "Set-Cookie",
                 "X-Session-Id", "X-Client-Secret"):
        assert is_auth_header(name), name
    for name in ("Accept", "Content-Type", "User-Agent", "X-Request-Id"):
        assert not is_auth_header(name), name


# ---------------------------------------------------------------- redaction


@pytest.mark.parametrize("pieces", [0, 1, 7])
def test_echoed_secret_is_redacted_in_every_encoding(env: Env, pieces: int) -> None:
    """The server sends the secret back raw, base64 (3 alignments, url-safe), %-encoded, hex.

    With ``pieces`` the server writes the body a few bytes at a time, so the
    forms reach the broker split across network reads.
    """
    handle = env.grant()
    response = env.call(handle, f"/api/reflect?pieces={pieces}")
    lines = response.body.split("\n")
    assert len(lines) == len(_every_encoding(SECRET))
    for line in lines:
        assert "[REDACTED:API_KEY]" in line
    for form in _every_encoding(SECRET):
        assert form not in response.body
    assert_no_secret(response.body)
    assert response.headers["x-echo"] == "[REDACTED:API_KEY]"
    assert response.redacted == ["API_KEY"]


def test_secret_echoed_by_query_and_basic_injection_is_redacted(denv: Env) -> None:
    for injection in (QueryInjection(param="key"), BasicAuthInjection(username="u")):
        handle = denv.grant(injection=injection)
        response = denv.call(handle, "/api/reflect")
        for form in _every_encoding(SECRET):
            assert form not in response.body
        assert response.body.count("[REDACTED:API_KEY]") == len(_every_encoding(SECRET))


def test_redaction_failure_returns_nothing(denv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = denv.grant()

    def broken(self: object, chunk: str, *, final: bool) -> str:
        raise MemoryError("simulated")

    monkeypatch.setattr("vault.redact.StreamRedactor._step", broken)
    with pytest.raises(RedactionError) as info:
        denv.call(handle, "/api/reflect")
    assert_no_secret(str(info.value))


def test_oversize_response_is_truncated_at_the_limit(server: ServerState, ca: trustme.CA,
                                                     tmp_path: Path) -> None:
    for env in _env(_make_source("dict", tmp_path), server, ca, tmp_path,
                    max_response_bytes=10_000):
        handle = env.grant()
        response = env.call(handle, "/api/big?n=50000")
        assert response.truncated
        # At most the limit; the redactor's held-back tail is dropped at a cut.
        assert response.body == "a" * len(response.body)
        assert 10_000 - 100 < len(response.body) <= 10_000
        small = env.call(handle, "/api/big?n=10000")
        assert not small.truncated and len(small.body) == 10_000
        # The secret straddles the cut: not even its beginning may come back.
        cut = env.call(handle, "/api/big?n=9990&tail=1")
        assert cut.truncated
        assert SECRET[:8].decode() not in cut.body
        assert set(cut.body) <= {"a"}


# ---------------------------------------------------------------- refusals


def _refusal(env: Env, handle: str | None, path: str, **kw: Any) -> str:
    with pytest.raises(GrantRefused) as info:
        env.call(handle, path, **kw)
    reason = info.value.reason
    assert_no_secret(reason)
    assert_no_secret(str(info.value))
    entry = env.audit.entries("refuse", limit=1)[0]
    assert entry.reason == reason and entry.decision == "deny"
    return reason


def test_out_of_scope_calls_are_refused_and_send_nothing(denv: Env) -> None:
    handle = denv.grant(methods=["GET"], path_pattern="/api/+/items", max_uses=5)
    port = denv.server.port
    cases = {
        "method": lambda: _refusal(denv, handle, "/api/x/items", method="DELETE"),
        "path": lambda: _refusal(denv, handle, "/api/x/other"),
        "path ": lambda: _refusal(denv, handle, "/api/x/y/items"),
        "path  ": lambda: _refusal(denv, handle, "/api/x/../../admin/items"),
        "session": lambda: _refusal(denv, handle, "/api/x/items", session_id="s2"),
        "expired": lambda: _refusal(denv, handle, "/api/x/items", now=NOW + timedelta(hours=2)),
    }
    reasons = {name: fn() for name, fn in cases.items()}
    assert reasons["method"].startswith("method: DELETE")
    assert reasons["path"].startswith("path: /api/x/other")
    assert reasons["path "].startswith("path:")
    assert reasons["path  "] == "path: /admin/items is outside /api/+/items"
    assert reasons["session"] == "handle: unknown capability handle"
    assert reasons["expired"].startswith("expired")
    for url, expected in [
        (f"https://other.test:{port}/api/x/items", "host: other.test is not localhost"),
        (f"https://localhost:{port + 1}/api/x/items", f"port: {port + 1} is not {port}"),
        (f"http://localhost:{port}/api/x/items", "scheme:"),
        (f"https://user:pw@localhost:{port}/api/x/items", "url: userinfo"),
        (f"https://localhost@other.test:{port}/api/x/items", "url: userinfo"),
        (f"https://127.0.0.1:{port}/api/x/items", "host: 127.0.0.1 is not localhost"),
        (f"https://localhost:{port}/api/x%2Fy/items", "url: encoded"),
        (f"https://localhost:{port}\\@other.test/api/x/items", "url: contains a backslash"),
    ]:
        with pytest.raises(GrantRefused) as info:
            denv.broker.call(handle, HttpCall(url=url), session_id="s1", now=NOW)
        assert info.value.reason.startswith(expected), (url, info.value.reason)
    assert denv.server.take() == []
    # None of the refusals used the grant up.
    [info_] = denv.broker.capabilities("s1", now=NOW)
    assert info_.uses_left == 5


def test_forged_malformed_revoked_and_used_up_handles(denv: Env) -> None:
    assert _refusal(denv, new_handle(), "/api/echo") == "handle: unknown capability handle"
    assert _refusal(denv, "cap_../../etc", "/api/echo") == "handle: unknown capability handle"
    assert denv.audit.entries("refuse", limit=1)[0].details["handle"] == "(malformed)"
    once = denv.grant(max_uses=1)
    denv.call(once, "/api/echo")
    assert _refusal(denv, once, "/api/echo").startswith("uses:")
    revoked = denv.grant()
    assert denv.broker.revoke(revoked, now=NOW)
    assert not denv.broker.revoke(revoked, now=NOW)
    assert _refusal(denv, revoked, "/api/echo").startswith("revoked")
    assert len(denv.server.take()) == 1


def test_end_of_session_revokes_its_grants(denv: Env) -> None:
    a = denv.grant()
    b = denv.grant(session_id="s2")
    assert denv.broker.end_session("s1", now=NOW) == [a]
    assert denv.broker.capabilities("s1", now=NOW) == []
    assert [c.handle for c in denv.broker.capabilities("s2", now=NOW)] == [b]
    assert _refusal(denv, a, "/api/echo").startswith("revoked")


def test_a_locked_vault_refuses_a_session_with_grants_without_reading_a_secret(
    denv: Env,
) -> None:
    source = denv.source
    assert isinstance(source, DictSource)
    denv.broker.check_capabilities_usable("s1", now=NOW)  # no grants: nothing needed
    denv.grant()
    denv.broker.check_capabilities_usable("s1", now=NOW)
    source.locked = True
    with pytest.raises(VaultLockedError, match="capabilities need it"):
        denv.broker.check_capabilities_usable("s1", now=NOW)
    denv.broker.check_capabilities_usable("s2", now=NOW)  # another session, no grants
    assert source.handed_out == []  # deciding never read a secret


def test_capabilities_show_no_secret(denv: Env) -> None:
    handle = denv.grant(max_uses=2)
    [info] = denv.broker.capabilities("s1", now=NOW)
    assert info.handle == handle
    assert info.uses_left == 2
    assert info.expires_at == NOW + timedelta(hours=1)
    assert "API_KEY" in info.description and "localhost" in info.description
    assert_no_secret(info.model_dump_json())
    denv.call(handle, "/api/echo")
    assert denv.broker.capabilities("s1", now=NOW)[0].uses_left == 1
    assert denv.broker.capabilities("s1", now=NOW + timedelta(hours=2)) == []


def test_grant_for_a_missing_secret_is_refused(denv: Env) -> None:
    with pytest.raises(SecretNotFoundError):
        denv.grant(secret_name="NOPE")


def test_locked_vault_refuses_without_using_the_grant(denv: Env) -> None:
    handle = denv.grant(max_uses=1)
    assert isinstance(denv.source, DictSource)
    denv.source.locked = True
    with pytest.raises(VaultLockedError):
        denv.call(handle, "/api/echo")
    denv.source.locked = False
    assert denv.call(handle, "/api/echo").status == 200


def test_handed_out_secret_buffers_are_zeroed(denv: Env) -> None:
    handle = denv.grant()
    denv.call(handle, "/api/echo")
    assert isinstance(denv.source, DictSource)
    assert denv.source.handed_out
    assert all(not any(buf) for buf in denv.source.handed_out)


# ---------------------------------------------------------------- redirects


def test_redirect_within_scope_is_followed_with_the_secret(env: Env) -> None:
    handle = env.grant()
    response = env.call(handle, "/api/redirect?to=/api/echo%3Fhop%3D2")
    first, second = env.server.take()
    assert first.path == "/api/redirect" and second.path == "/api/echo"
    assert second.headers["authorization"] == "Bearer " + SECRET.decode()
    assert response.status == 200
    assert response.url == f"https://localhost:{env.server.port}/api/echo?hop=2"
    assert env.audit.entries("redeem")[0].details["redirects"] == 1


def test_redirect_to_another_host_is_refused_and_gets_no_secret(denv: Env) -> None:
    handle = denv.grant()
    target = quote(f"https://other.test:{denv.server.port}/api/echo", safe="")
    reason = _refusal(denv, handle, f"/api/redirect?to={target}")
    assert reason.startswith("redirect to https://other.test:")
    assert "host: other.test is not localhost" in reason
    [only] = denv.server.take()
    assert only.path == "/api/redirect"


def test_redirect_out_of_path_or_to_http_is_refused(denv: Env) -> None:
    handle = denv.grant()
    assert "path: /elsewhere" in _refusal(denv, handle, "/api/redirect?to=/elsewhere")
    plain = quote(f"http://localhost:{denv.server.port}/api/echo", safe="")
    assert "scheme:" in _refusal(denv, handle, f"/api/redirect?to={plain}")
    userinfo = quote(f"https://x@localhost:{denv.server.port}/api/echo", safe="")
    assert "userinfo" in _refusal(denv, handle, f"/api/redirect?to={userinfo}")


def test_303_turns_post_into_get_and_is_checked_again(denv: Env) -> None:
    handle = denv.grant(methods=["POST"])
    reason = _refusal(
        denv, handle, "/api/redirect?to=/api/echo&code=303", method="POST", body="{}"
    )
    assert "method: GET not allowed" in reason
    both = denv.grant(methods=["GET", "POST"])
    kept = denv.call(both, "/api/redirect?to=/api/echo&code=307", method="POST", body="data")
    assert json.loads(kept.body)["method"] == "POST"
    assert json.loads(kept.body)["body"] == "data"


def test_redirect_loop_stops(denv: Env) -> None:
    handle = denv.grant()
    assert denv.call(handle, "/api/loop?n=0&stop=5").body == "stopped after 5"
    denv.server.take()
    assert _refusal(denv, handle, "/api/loop?n=0") == "redirect: more than 5 hops"
    assert len(denv.server.take()) == 6


def test_secret_echoed_in_a_location_is_not_shown(denv: Env) -> None:
    handle = denv.grant(injection=QueryInjection(param="key"))
    # The server echoes its query (with the injected key) into the next hop.
    response = denv.call(handle, "/api/redirect?to=/api/echo")
    assert_no_secret(response.url)
    assert_no_secret(response.body)


# ------------------------------------------------------------ without handle


def test_plain_call_to_loopback_is_refused_unless_local(denv: Env, server: ServerState,
                                                        ca: trustme.CA, tmp_path: Path) -> None:
    # Not a local host: only the default port, and (see below) only public addresses.
    assert _refusal(denv, None, "/api/echo").startswith(f"port: {denv.server.port} not allowed")
    for env in _env(_make_source("dict", tmp_path / "b"), server, ca, tmp_path / "b",
                    local_hosts=["localhost"]):
        response = env.call(None, "/api/echo", headers={"Authorization": "Bearer made-up"})
        [seen] = env.server.take()
        assert "authorization" not in seen.headers
        assert response.status == 200
        assert env.audit.entries("request")[0].details["url"].startswith("https://localhost:")
        assert _refusal(env, None, "/api/echo", method="TRACE") == "method: TRACE not allowed"


def test_public_redirect_cannot_reach_a_local_host(tmp_path: Path) -> None:
    """A plain call to a public site that redirects to a local_hosts entry is refused."""
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://localhost:8080/admin"})

    db = tmp_path / "keyless.db"
    broker = Broker(DictSource({}), GrantStore(db), AuditLog(db),
                    transport=httpx.MockTransport(handler),
                    resolver=static_resolver(RESOLVER_TABLE), local_hosts=["localhost"])
    with pytest.raises(GrantRefused) as info:
        broker.call(None, HttpCall(url="https://api.example.com/x"), session_id="s", now=NOW)
    assert info.value.reason.startswith("redirect to http://localhost:8080/admin: port:")
    assert sent == ["https://93.184.216.34/x"]


# ------------------------------------------------ addresses and DNS pinning


def _mock_env(tmp_path: Path, handler: Callable[[httpx.Request], httpx.Response],
              resolver: Callable[[str, int], list[str]]) -> tuple[Broker, AuditLog]:
    db = tmp_path / "keyless.db"
    audit = AuditLog(db)
    broker = Broker(
        DictSource({"API_KEY": SECRET}),
        GrantStore(db),
        audit,
        transport=httpx.MockTransport(handler),
        resolver=resolver,
    )
    return broker, audit


def _public_grant(**kw: Any) -> CapabilityGrant:
    base: dict[str, Any] = {
        "secret_name": "API_KEY",
        "injection": header_injection("Authorization: token {}"),
        "methods": ["GET"],
        "host": "api.example.com",
        "path_pattern": "/v1/*",
        "session_id": "s1",
        "approved_by": "tester",
        "approved_at": NOW,
    }
    base.update(kw)
    return CapabilityGrant(**base)


def test_connection_is_pinned_to_the_checked_address(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/hop":
            return httpx.Response(302, headers={"Location": "/v1/done"})
        return httpx.Response(200, text="ok")

    resolver = static_resolver(RESOLVER_TABLE)
    broker, _ = _mock_env(tmp_path, handler, resolver)
    handle = broker.grant(_public_grant(), now=NOW).handle
    response = broker.call(handle, HttpCall(url="https://API.example.com./v1/hop"),
                           session_id="s1", now=NOW)
    assert response.status == 200 and response.body == "ok"
    assert response.url == "https://api.example.com/v1/done"
    for request in seen:
        assert request.url.host == "93.184.216.34"
        assert request.headers["host"] == "api.example.com"
        assert request.extensions["sni_hostname"] == "api.example.com"
        assert request.headers["connection"] == "close"
        assert request.headers["authorization"] == "token " + SECRET.decode()
    # Resolved once per hop, by the broker, never by the transport.
    assert resolver.calls == ["api.example.com", "api.example.com"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("mixed.example.com", "address: mixed.example.com resolves to a private or loopback"),
        ("meta.example.com", "address: meta.example.com resolves to a link-local"),
        ("localhost", "address: localhost resolves to a private or loopback"),
    ],
)
def test_private_addresses_are_refused_without_allow_local(tmp_path: Path, host: str,
                                                           reason: str) -> None:
    sent: list[httpx.Request] = []
    broker, audit = _mock_env(
        tmp_path, lambda r: sent.append(r) or httpx.Response(200),  # type: ignore[func-returns-value]
        static_resolver(RESOLVER_TABLE),
    )
    handle = broker.grant(_public_grant(host=host), now=NOW).handle
    with pytest.raises(GrantRefused) as info:
        broker.call(handle, HttpCall(url=f"https://{host}/v1/x"), session_id="s1", now=NOW)
    assert info.value.reason.startswith(reason)
    assert sent == []
    assert broker.capabilities("s1", now=NOW)[0].uses_left is None
    with pytest.raises(GrantRefused) as plain:
        broker.call(None, HttpCall(url=f"https://{host}/v1/x"), session_id="s1", now=NOW)
    assert plain.value.reason.startswith(reason)
    assert [e.kind for e in audit.entries()][:2] == ["refuse", "refuse"]


def test_a_trickling_body_hits_the_total_deadline(tmp_path: Path) -> None:
    clock = iter(range(0, 1000, 4))

    class Trickle(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(100):
                yield b"x"

    db = tmp_path / "keyless.db"
    broker = Broker(DictSource({}), GrantStore(db), AuditLog(db),
                    transport=httpx.MockTransport(lambda r: httpx.Response(200, stream=Trickle())),
                    resolver=static_resolver(RESOLVER_TABLE), timeout=10.0,
                    clock=lambda: float(next(clock)))
    with pytest.raises(VaultError, match="took longer than 10 s"):
        broker.call(None, HttpCall(url="https://api.example.com/x"), session_id="s", now=NOW)


@pytest.mark.parametrize(
    ("value", "injection", "reason"),
    [
        (b"\xff\xfebinary-key-0123", QueryInjection(param="key"), "injection: the secret is not"),
        (b"line1\r\nX-Evil: 1", header_injection("X-Key: {}"), "injection: the secret holds"),
        (b"nul\x00inside-key", BasicAuthInjection(username="u"), "injection: the secret holds"),
    ],
)
def test_secret_that_cannot_be_injected_is_refused_before_use(
    tmp_path: Path, value: bytes, injection: Any, reason: str
) -> None:
    sent: list[httpx.Request] = []
    db = tmp_path / "keyless.db"
    broker = Broker(DictSource({"API_KEY": value}), GrantStore(db), AuditLog(db),
                    transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200)),  # type: ignore[func-returns-value]
                    resolver=static_resolver(RESOLVER_TABLE))
    handle = broker.grant(_public_grant(injection=injection, max_uses=1), now=NOW).handle
    with pytest.raises(GrantRefused) as info:
        broker.call(handle, HttpCall(url="https://api.example.com/v1/x"), session_id="s1",
                    now=NOW)
    assert info.value.reason.startswith(reason)
    assert info.value.__context__ is None
    assert sent == []
    assert broker.capabilities("s1", now=NOW)[0].uses_left == 1


def test_transport_errors_do_not_leak_the_secret(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    broker, _ = _mock_env(tmp_path, handler, static_resolver(RESOLVER_TABLE))
    handle = broker.grant(_public_grant(injection=QueryInjection(param="key")), now=NOW).handle
    with pytest.raises(Exception) as info:
        broker.call(handle, HttpCall(url="https://api.example.com/v1/x"), session_id="s1",
                    now=NOW)
    assert "ConnectError" in str(info.value)
    # Neither chained nor as context: the httpx error quotes the URL with the secret.
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert_no_secret(str(info.value))


def test_every_checked_address_is_tried_in_order(server: ServerState, ca: trustme.CA,
                                                  tmp_path: Path) -> None:
    """localhost often resolves to ::1 first; the server only listens on 127.0.0.1."""
    resolver = static_resolver({**RESOLVER_TABLE, "localhost": ["::1", "127.0.0.1"]})
    for env in _env(_make_source("dict", tmp_path), server, ca, tmp_path, resolver=resolver):
        handle = env.grant()
        assert env.call(handle, "/api/echo").status == 200
        assert env.audit.entries("redeem")[0].details["address"] == "127.0.0.1"
        assert len(env.server.take()) == 1


def test_certificate_for_another_name_is_refused(server: ServerState, ca: trustme.CA,
                                                  tmp_path: Path) -> None:
    """wrong.test resolves to the server, whose certificate does not name it."""
    resolver = static_resolver({**RESOLVER_TABLE, "wrong.test": ["127.0.0.1"]})
    for env in _env(_make_source("dict", tmp_path), server, ca, tmp_path, resolver=resolver):
        handle = env.grant(host="wrong.test")
        with pytest.raises(VaultError) as info:
            env.broker.call(handle, HttpCall(url=env.url("/api/echo", host="wrong.test")),
                            session_id="s1", now=NOW)
        assert "ConnectError" in str(info.value) and "certificate" in str(info.value).lower()
        assert not isinstance(info.value, GrantRefused)
        assert env.server.take() == []


# -------------------------------------------------------------- concurrency


def test_racing_threads_get_exactly_max_uses(denv: Env) -> None:
    handle = denv.grant(max_uses=3)
    n = 12
    barrier = threading.Barrier(n)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            denv.call(handle, "/api/echo")
            result = "ok"
        except GrantRefused as e:
            result = e.reason
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 3
    assert all(o.startswith("uses:") for o in outcomes if o != "ok")
    assert len(denv.server.take()) == 3
    assert len(denv.audit.entries("redeem")) == 3
    assert denv.audit.verify().ok


# ------------------------------------------------------- audit and scanning


def test_audit_never_holds_the_secret(env: Env) -> None:
    handle = env.grant(injection=QueryInjection(param="key"))
    env.call(handle, "/api/reflect")
    with pytest.raises(GrantRefused):
        env.call(handle, "/api/redirect?to=" + quote("https://other.test/api/x", safe=""))
    kinds = [e.kind for e in env.audit.entries()]
    # The refused hop came after the grant was used: one redeem, one refuse.
    assert kinds == ["refuse", "redeem", "grant"]
    check = env.audit.verify()
    assert check.ok and check.n_entries == 3
    for entry in env.audit.entries():
        assert_no_secret(entry.model_dump_json())
    redeem = env.audit.entries("redeem")[0]
    assert redeem.details["redacted"] == ["API_KEY"]
    raw = b"".join(p.read_bytes() for p in env.db.parent.glob("keyless.db*"))
    for form in secret_forms(SECRET):
        assert form.encode() not in raw


def test_redact_catches_a_secret_spelled_with_nuls(
    server: ServerState, ca: trustme.CA, tmp_path: Path
) -> None:
    source = _make_source("dict", tmp_path)
    for env in _env(source, server, ca, tmp_path):
        env.grant()
        # What `cat` of a UTF-16 file holding the key prints, read as UTF-8.
        text = "API_KEY=" + SECRET.decode() + "\n"
        wide = text.encode("utf-16-le").decode("utf-8")
        redacted, names = env.broker.redact(wide, session_id="s1")
        assert names == ["API_KEY"]
        assert_no_secret(redacted.replace("\x00", ""))
        # NULs that hide nothing stay: they may be data (find -print0).
        assert env.broker.redact("a\x00b\x00", session_id="s1") == ("a\x00b\x00", [])


def test_scan_and_redact_for_a_session(server: ServerState, ca: trustme.CA,
                                       tmp_path: Path) -> None:
    source = _make_source("dict", tmp_path)
    for env in _env(source, server, ca, tmp_path, canaries=["CANARY-7f3a9c"]):
        text = f"x {SECRET.decode()} y {base64.b64encode(OTHER).decode()} z CANARY-7f3a9c"
        assert env.broker.scan(text) == ["API_KEY", "OTHER", "canary"]
        assert env.broker.scan("nothing here") == []
        env.grant()
        redacted, names = env.broker.redact(text, session_id="s1")
        # Unlocked: the session's secret, every other vault secret (a key in a
        # workspace .env file) and the canaries are all kept from the agent.
        assert sorted(names) == ["API_KEY", "OTHER", "canary"]
        assert_no_secret(redacted)
        assert base64.b64encode(OTHER).decode() not in redacted
        assert "CANARY-7f3a9c" not in redacted
        assert isinstance(source, DictSource)
        source.locked = True
        with pytest.raises(RedactionError):
            env.broker.scan(text)
        with pytest.raises(RedactionError):
            env.broker.redact(text, session_id="s1")


def test_secrets_generated_at_random_never_come_back(denv: Env) -> None:
    assert isinstance(denv.source, DictSource)
    for _ in range(5):
        value = secrets.token_urlsafe(24).encode()
        denv.source.values["API_KEY"] = value
        handle = denv.grant()
        response = denv.call(handle, "/api/reflect")
        for form in _every_encoding(value):
            assert form not in response.body
        assert_no_secret(response.body, value)


# --------------------------------------------------- the agent's http tool


def test_agent_http_tool_through_the_broker(denv: Env, tmp_path: Path) -> None:
    """The host-side http_request tool drives this broker end to end."""
    from agent.errors import ToolDeniedError
    from agent.host.ports import BrokerPort
    from agent.host.tools import http_request
    from agent.host.tools.base import ToolContext

    assert isinstance(denv.broker, BrokerPort)
    handle = denv.grant()
    ctx = ToolContext(workspace=tmp_path, session_id="s1", broker=denv.broker, now=lambda: NOW)
    out = http_request.run(
        http_request.Args(url=denv.url("/api/reflect"), capability=handle), ctx
    )
    assert out.untrusted and out.redacted == ["API_KEY"]
    assert out.content.startswith("HTTP 200")
    assert_no_secret(out.content)
    [seen] = denv.server.take()
    assert seen.headers["authorization"] == "Bearer " + SECRET.decode()
    with pytest.raises(ToolDeniedError, match="path: /elsewhere"):
        http_request.run(
            http_request.Args(url=denv.url("/elsewhere"), capability=handle), ctx
        )


@pytest.mark.parametrize("charset", ["utf-16", "utf-16-be", "utf-32", "utf-7", "cp037"])
def test_echo_under_a_foreign_charset_cannot_smuggle_the_secret(
    tmp_path: Path, charset: str
) -> None:
    # The server echoes the request's Authorization header but declares a
    # charset that is not ASCII-compatible: decoding the UTF-8 bytes with it
    # gives text the redactor does not recognise, which the agent re-encodes.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            content=b"echo: " + request.headers["authorization"].encode() + b"\n",
            headers={"Content-Type": f"text/plain; charset={charset}"},
        )

    broker, _ = _mock_env(tmp_path, handler, static_resolver(RESOLVER_TABLE))
    handle = broker.grant(_public_grant(), now=NOW).handle
    response = broker.call(handle, HttpCall(url="https://api.example.com/v1/echo"),
                           session_id="s1", now=NOW)
    assert response.redacted == ["API_KEY"]
    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "utf-7", "cp037"):
        recoded = response.body.encode(codec, errors="ignore")
        assert SECRET not in recoded, codec


def test_method_and_url_override_headers_are_stripped(tmp_path: Path) -> None:
    # A GET-only grant on /v1/* must not become a DELETE, or reach another
    # path, on servers that honour override headers (Google APIs, Symfony, IIS).
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="ok")

    broker, audit = _mock_env(tmp_path, handler, static_resolver(RESOLVER_TABLE))
    handle = broker.grant(_public_grant(), now=NOW).handle
    overrides = {
        "X-HTTP-Method-Override": "DELETE",
        "X-HTTP-Method": "DELETE",
        "X-Method-Override": "DELETE",
        "X-Original-URL": "/admin/delete",
        "X-Rewrite-URL": "/admin/delete",
    }
    broker.call(handle, HttpCall(url="https://api.example.com/v1/x", headers=overrides),
                session_id="s1", now=NOW)
    [request] = seen
    for name in overrides:
        assert name.lower() not in request.headers
    [entry] = audit.entries("redeem")
    assert set(entry.details["stripped_headers"]) >= {n.lower() for n in overrides}


def test_a_session_without_grants_still_never_sees_a_vault_secret(
    server: ServerState, ca: trustme.CA, tmp_path: Path
) -> None:
    source = _make_source("dict", tmp_path)
    for env in _env(source, server, ca, tmp_path):
        dotenv = f"GITHUB_TOKEN={SECRET.decode()}\nOTHER={OTHER.hex()}\n"
        redacted, names = env.broker.redact(dotenv, session_id="no-grants")
        assert sorted(names) == ["API_KEY", "OTHER"]
        assert_no_secret(redacted)
        assert OTHER.hex() not in redacted
        assert isinstance(source, DictSource)
        source.locked = True  # nothing granted, nothing readable: the text passes as is
        assert env.broker.redact("plain text", session_id="no-grants") == ("plain text", [])


# ------------------------------------------------------- redaction while locked


def test_locked_vault_withholds_a_workspace_copy_of_a_secret(
    server: ServerState, ca: trustme.CA, tmp_path: Path
) -> None:
    vault = _make_source("vault", tmp_path)
    assert isinstance(vault, Vault)
    key = SECRET.decode()
    dotenv = (
        "# settings for the deploy script\n"
        f"API_KEY={key}\n"
        f"API_KEY_B64={base64.b64encode(SECRET).decode()}\n"
        f"API_KEY_SPLIT={key[:12]}\n    {key[12:]}\n"
        "# end of the settings file, nothing secret here\n"
    )
    for env in _env(vault, server, ca, tmp_path):
        # Unlocked: redacted by name, and the fingerprints are written.
        text, names = env.broker.redact(dotenv, session_id="no-grants")
        assert "API_KEY" in names and key not in text
        vault.lock()
        text, names = env.broker.redact(dotenv, session_id="no-grants")
        assert names == ["vault secret (locked)"]
        assert key not in text and base64.b64encode(SECRET).decode() not in text
        assert key[:12] not in text and key[12:] not in text
        assert text.startswith("# settings for") and text.endswith("nothing secret here\n")
        stream = env.broker.redact_stream(session_id="no-grants")
        assert "".join(stream.feed(c) for c in dotenv) + stream.finish() == text


def test_locked_vault_without_an_index_fails_closed(
    server: ServerState, ca: trustme.CA, tmp_path: Path
) -> None:
    vault = _make_source("vault", tmp_path)
    assert isinstance(vault, Vault)
    index = vault.fingerprints_path
    for env in _env(vault, server, ca, tmp_path):
        older = index.read_bytes()  # the vault indexes itself on every save
        index.unlink()
        vault.lock()
        with pytest.raises(RedactionError, match="never indexed"):
            env.broker.redact("anything", session_id="s1")
        vault.unlock("correct horse")  # unlocking indexes again
        vault.lock()
        assert env.broker.redact("anything", session_id="s1") == ("anything", [])
        vault.unlock("correct horse")
        vault.add("NEW", b"a-new-secret-added-later-0123456789")
        vault.lock()
        index.write_bytes(older)  # an index older than the vault (a failed write)
        with pytest.raises(RedactionError, match="changed since"):
            env.broker.redact("anything", session_id="s1")


def test_an_index_of_an_older_version_is_rebuilt_by_an_unlocked_broker(
    server: ServerState, ca: trustme.CA, tmp_path: Path
) -> None:
    vault = _make_source("vault", tmp_path)
    assert isinstance(vault, Vault)
    index = vault.fingerprints_path
    for env in _env(vault, server, ca, tmp_path):
        data = json.loads(index.read_text())
        data["window"] = 12  # written by a version with wider near-copy windows
        index.write_text(json.dumps(data))
        vault.lock()
        with pytest.raises(RedactionError, match="another version of Keyless"):
            env.broker.redact("anything", session_id="s1")
        vault.unlock("correct horse")
        index.write_text(json.dumps(data))  # still there after the unlock
        text, names = env.broker.redact(SECRET.decode(), session_id="no-grants")
        assert SECRET.decode() not in text and names  # the unlocked broker redacts...
        vault.lock()
        assert env.broker.redact("anything", session_id="s1") == ("anything", [])  # reindexed


def test_a_locked_broker_sees_each_new_index(
    server: ServerState, ca: trustme.CA, tmp_path: Path
) -> None:
    vault = _make_source("vault", tmp_path)
    assert isinstance(vault, Vault)
    later = "a-secret-added-after-the-first-load-0123456789"
    text = f"first line of prose here, then {later} and more prose after it\n"
    for env in _env(vault, server, ca, tmp_path):
        vault.lock()
        assert env.broker.redact(text, session_id="s1") == (text, [])  # index loaded
        vault.unlock("correct horse")
        vault.add("LATER", later.encode())
        vault.lock()
        redacted, names = env.broker.redact(text, session_id="s1")  # the new index
        assert later not in redacted and names == ["vault secret (locked)"]
