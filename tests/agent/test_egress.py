"""The egress proxy, end to end: real bubblewrap, real mitmproxy, real curl and httpx.

A loopback HTTPS server (trustme CA) stands for the internet. The proxy is
built by the test as the host builds it, with the explicit override that lets
``localhost`` resolve to loopback and the test CA verify upstream; the command
inside the sandbox holds only ``cap_`` handles.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import certifi
import h11
import httpcore
import httpx
import idna
import pytest
import trustme

from agent.host.egress.proxy import EgressProxy, EgressRequest, EgressVerdict
from agent.host.sandbox import Limits, Sandbox
from tests.agent.egresskit import https_server
from vault.audit import AuditLog
from vault.broker import Broker
from vault.grants import BasicAuthInjection, CapabilityGrant, GrantStore, HeaderInjection
from vault.keystore import NoKeyring
from vault.store import Argon2Params, Vault

SECRET = "sk-live-egress-0123456789abcdef"
SESSION = "egress-session"
BOTH = threading.Barrier(2)

pytestmark = pytest.mark.skipif(
    not Sandbox.detect().available or shutil.which("curl") is None,
    reason="needs bubblewrap and curl",
)


class Echo(BaseHTTPRequestHandler):
    """Answers with what it was sent; some paths echo the credential in other encodings."""

    def log_message(self, *args: Any) -> None:
        return

    def _auth(self) -> str:
        return self.headers.get("Authorization", "")

    def do_GET(self) -> None:  # noqa: D102 (the handler's contract is http.server's)
        auth = self._auth()
        token = auth.partition(" ")[2]
        if self.path.startswith("/redirect"):
            self.send_response(302)
            port = self.server.server_address[1]
            self.send_header("Location", f"https://127.0.0.1:{port}/echo")
            self.end_headers()
            return
        if self.path.startswith("/both"):
            BOTH.wait(timeout=20)  # two sessions' requests in flight at once
        if self.path.startswith("/b64"):
            body = base64.b64encode(token.encode()).decode().encode()
            self._send(body)
        elif self.path.startswith("/gzip"):
            self._send(gzip.compress(("token=" + token).encode()), encoding="gzip")
        elif self.path.startswith("/chunks"):
            self.protocol_version = "HTTP/1.1"  # chunked needs 1.1
            self.send_response(200)
            self.send_header("Connection", "close")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            text = ("before " + token + " after").encode()
            for i in range(0, len(text), 3):
                part = text[i : i + 3]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            body = json.dumps(
                {"path": self.path, "auth": auth, "headers": dict(self.headers.items())}
            ).encode()
            self._send(body, extra={"X-Echo-Auth": auth})

    do_POST = do_GET

    def _send(self, body: bytes, *, encoding: str | None = None,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Hooks:
    """The host's side, as a test sets it: allowed hosts, the requests seen, the audit."""

    allow: set[str] = field(default_factory=lambda: {"localhost"})
    seen: list[EgressRequest] = field(default_factory=list)
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, request: EgressRequest) -> EgressVerdict:
        with self.lock:
            self.seen.append(request)
        if request.host in self.allow:
            return EgressVerdict(True, "allowed by test")
        return EgressVerdict(False, f"net rule: {request.host} is not allowed")

    def record(self, kind: str, **fields: Any) -> None:
        with self.lock:
            self.records.append((kind, fields))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server(ca: trustme.CA) -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@dataclass
class Rig:
    proxy: EgressProxy
    hooks: Hooks
    broker: Broker
    audit: AuditLog
    port: int
    ws: Path

    def run(self, command: str) -> str:
        result = Sandbox.detect().run_shell(
            command, self.ws, Limits(wall_seconds=30), egress=self.proxy
        )
        return result.describe()

    def grant(self, *, path: str = "/*", methods: tuple[str, ...] = ("GET",),
              injection: Any = None, host: str = "localhost") -> str:
        info = self.broker.grant(
            CapabilityGrant(
                secret_name="API_TOKEN",
                session_id=SESSION,
                injection=injection
                or HeaderInjection(header="Authorization", template="Bearer {}"),
                methods=methods,
                host=host,
                port=self.port,
                path_pattern=path,
                allow_local=True,
                approved_by="test",
                approved_at=datetime.now(UTC),
            )
        )
        return info.handle


@pytest.fixture
def rig(tmp_path: Path, ca: trustme.CA, server: int) -> Iterator[Rig]:
    vault = Vault.create(
        tmp_path / "vault.kls",
        passphrase="correct horse",
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    )
    vault.add("API_TOKEN", SECRET.encode())
    db = tmp_path / "keyless.db"
    audit = AuditLog(db)
    broker = Broker(vault, GrantStore(db), audit, resolver=lambda host, port: ["127.0.0.1"])
    ca_file = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    hooks = Hooks()
    proxy = EgressProxy(
        hooks,
        broker,
        session_id=SESSION,
        local_hosts=["localhost"],
        upstream_ca=ca_file,
        resolver=lambda host, port: ["127.0.0.1"],
    )
    proxy.start()
    ws = tmp_path / "ws"
    ws.mkdir()
    try:
        yield Rig(proxy, hooks, broker, audit, server, ws)
    finally:
        proxy.close()
        broker.close()


def test_curl_reaches_an_allowed_host_through_the_proxy(rig: Rig) -> None:
    out = rig.run(f"curl -sS https://localhost:{rig.port}/hello")
    assert '"path": "/hello"' in out
    assert rig.hooks.seen[-1].host == "localhost"
    assert rig.hooks.seen[-1].command.startswith("curl")
    assert any(kind == "egress_request" for kind, _ in rig.hooks.records)


def test_a_host_the_rules_refuse_gets_403_with_the_reason(rig: Rig) -> None:
    rig.hooks.allow = set()
    out = rig.run(f"curl -sS https://localhost:{rig.port}/hello")
    assert "Keyless egress refused this request" in out
    assert "not allowed" in out


def test_bearer_handle_is_swapped_for_the_secret_and_echo_redacted(rig: Rig) -> None:
    handle = rig.grant()
    out = rig.run(f'curl -sS -H "Authorization: Bearer {handle}" https://localhost:{rig.port}/echo')
    assert SECRET not in out
    assert "[REDACTED:API_TOKEN]" in out
    assert handle not in out


def test_httpx_in_the_sandbox_uses_the_proxy(rig: Rig) -> None:
    handle = rig.grant()
    script = (
        "import httpx;"
        f"r = httpx.get('https://localhost:{rig.port}/echo', "
        f"headers={{'Authorization': 'Bearer {handle}'}});"
        "print(r.status_code, r.text)"
    )
    # The venv is not in the sandbox: copy httpx and its pure-Python dependencies in.
    site = rig.ws / "site"
    for module in (httpx, httpcore, h11, anyio, idna, certifi):
        source = Path(module.__file__).parent
        shutil.copytree(source, site / source.name)
    out = rig.run(f"PYTHONPATH={site} /usr/bin/python3 -c \"{script}\"")
    assert "200" in out and "[REDACTED:API_TOKEN]" in out and SECRET not in out


def test_basic_auth_password_handle_is_swapped(rig: Rig) -> None:
    handle = rig.grant(injection=BasicAuthInjection(username="x-access-token"))
    out = rig.run(f"curl -sS -u x-access-token:{handle} https://localhost:{rig.port}/echo")
    assert "[REDACTED:API_TOKEN]" in out and SECRET not in out and handle not in out
    expected = base64.b64encode(f"x-access-token:{SECRET}".encode()).decode()
    assert expected not in out


@pytest.mark.parametrize("path", ["/b64", "/gzip", "/chunks"])
def test_echoed_secret_is_redacted_in_every_encoding(rig: Rig, path: str) -> None:
    handle = rig.grant()
    out = rig.run(
        f'curl -sS --compressed -H "Authorization: Bearer {handle}" https://localhost:{rig.port}{path}'
    )
    assert "exit status 0" in out
    assert SECRET not in out
    assert base64.b64encode(SECRET.encode()).decode() not in out
    assert "[REDACTED:API_TOKEN]" in out


@pytest.mark.parametrize(
    ("grant_kw", "curl", "reason"),
    [
        ({"path": "/only/*"}, "https://localhost:{port}/echo", "path"),
        ({"methods": ("POST",)}, "https://localhost:{port}/echo", "method"),
        ({"host": "api.example.com"}, "https://localhost:{port}/echo", "host"),
    ],
)
def test_handle_out_of_scope_is_refused_with_the_reason_and_audited(
    rig: Rig, grant_kw: dict[str, Any], curl: str, reason: str
) -> None:
    handle = rig.grant(**grant_kw)
    url = curl.format(port=rig.port)
    out = rig.run(f'curl -sS -H "Authorization: Bearer {handle}" {url}')
    assert "capability refused" in out and reason in out
    assert SECRET not in out
    refusals = [e for e in rig.audit.entries() if e.kind == "refuse"]
    assert refusals and refusals[-1].tool == "egress"


def test_redirect_to_another_host_does_not_carry_the_secret(rig: Rig) -> None:
    rig.hooks.allow = {"localhost", "127.0.0.1"}
    handle = rig.grant()
    out = rig.run(
        f'curl -sS -L --location-trusted -H "Authorization: Bearer {handle}" '
        f"https://localhost:{rig.port}/redirect"
    )
    assert "capability refused" in out and "host" in out
    assert SECRET not in out


def test_direct_connections_and_dns_fail(rig: Rig) -> None:
    out = rig.run(
        f"curl -sS --noproxy '*' https://127.0.0.1:{rig.port}/x; echo rc=$?; "
        "getent hosts example.com; echo dns=$?"
    )
    assert "rc=7" in out  # could not connect
    assert "dns=2" in out


def test_loopback_is_refused_without_the_hosts_override(
    tmp_path: Path, ca: trustme.CA, server: int
) -> None:
    hooks = Hooks()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proxy = EgressProxy(hooks, None, session_id=SESSION, upstream_ca=ca_file,
                        resolver=lambda host, port: ["127.0.0.1"])
    proxy.start()
    ws = tmp_path / "ws"
    ws.mkdir()
    try:
        result = Sandbox.detect().run_shell(
            f"curl -sS -o /dev/null -w '%{{http_code}}' https://localhost:{server}/x",
            ws, Limits(wall_seconds=30), egress=proxy,
        )
    finally:
        proxy.close()
    assert "200" not in result.output
    assert any(kind == "egress_failed" for kind, _ in hooks.records)


@pytest.mark.parametrize("ttl", [30.0, 0.0])
def test_a_session_reuses_a_resolution_but_checks_the_address_every_time(
    tmp_path: Path, ca: trustme.CA, server: int, monkeypatch: pytest.MonkeyPatch, ttl: float
) -> None:
    monkeypatch.setattr("agent.host.egress.proxy.RESOLVED_TTL", ttl)
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    hooks = Hooks()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # No local_hosts override: the loopback answer is refused, cached or not.
    proxy = EgressProxy(hooks, None, session_id=SESSION, upstream_ca=ca_file, resolver=resolver)
    proxy.start()
    ws = tmp_path / "ws"
    ws.mkdir()
    try:
        for _ in range(2):
            Sandbox.detect().run_shell(
                f"curl -sS -o /dev/null https://localhost:{server}/x", ws,
                Limits(wall_seconds=30), egress=proxy,
            )
    finally:
        proxy.close()
    assert len([k for k, _ in hooks.records if k == "egress_failed"]) == 2
    assert resolved == ["localhost"] * (1 if ttl else 2)


def test_a_process_outside_the_sandbox_cannot_use_the_proxy_port(rig: Rig) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", rig.proxy._port), timeout=5) as sock:
        sock.sendall(b"GET http://localhost/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed without an answer
    assert rig.hooks.seen == []


def test_a_host_that_cannot_decide_refuses(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(request: EgressRequest) -> EgressVerdict:
        raise OSError("audit log is full")

    monkeypatch.setattr(rig.hooks, "decide", broken)
    out = rig.run(f"curl -sS https://localhost:{rig.port}/hello")
    assert "could not decide" in out and '"path"' not in out



class KeepAliveEcho(Echo):
    """Echo over HTTP/1.1: the server keeps each connection open between requests."""

    protocol_version = "HTTP/1.1"


def test_a_kept_alive_connection_serves_many_requests(rig: Rig, ca: trustme.CA) -> None:
    # curl reuses its tunnel for every URL; mitmproxy must reuse its upstream
    # connection too: it stalled at its limit of 5 open connections per address.
    with https_server(ca, KeepAliveEcho) as httpd:
        port = httpd.server_address[1]
        urls = " ".join(f"https://localhost:{port}/n{i}" for i in range(8))
        out = rig.run(f"curl -sS --max-time 10 {urls}")
    assert all(f'"path": "/n{i}"' in out for i in range(8)), out


def test_two_sessions_share_the_server_at_once_each_with_its_own_grants(
    rig: Rig, tmp_path: Path
) -> None:
    other_hooks = Hooks()
    other = EgressProxy(other_hooks, rig.broker, session_id="other-session",
                        local_hosts=["localhost"], upstream_ca=rig.proxy.upstream_ca,
                        resolver=lambda host, port: ["127.0.0.1"])
    other.start()
    try:
        assert other._server is rig.proxy._server  # one mitmproxy master for both
        mine = rig.grant()
        theirs = rig.broker.grant(
            CapabilityGrant(
                secret_name="API_TOKEN", session_id="other-session",
                injection=HeaderInjection(header="Authorization", template="Bearer {}"),
                methods=("GET",), host="localhost", port=rig.port, path_pattern="/*",
                allow_local=True, approved_by="test", approved_at=datetime.now(UTC),
            )
        ).handle
        other_ws = tmp_path / "other-ws"
        other_ws.mkdir()

        def curl(proxy: EgressProxy, ws: Path, handle: str, path: str) -> str:
            return Sandbox.detect().run_shell(
                f'curl -sS -H "Authorization: Bearer {handle}" https://localhost:{rig.port}{path}',
                ws, Limits(wall_seconds=30), egress=proxy,
            ).describe()

        # /both answers only once two requests wait on it: the sessions overlap.
        outs: dict[str, str] = {}
        threads = [
            threading.Thread(target=lambda: outs.__setitem__(
                "mine", curl(rig.proxy, rig.ws, mine, "/both/mine"))),
            threading.Thread(target=lambda: outs.__setitem__(
                "theirs", curl(other, other_ws, theirs, "/both/theirs"))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for name in ("mine", "theirs"):
            assert f'"path": "/both/{name}"' in outs[name], outs
            assert "[REDACTED" in outs[name] and SECRET not in outs[name]
        # Each session's requests went to its own hooks (rules, prompt, audit).
        assert [r.path for r in rig.hooks.seen] == ["/both/mine"]
        assert [r.path for r in other_hooks.seen] == ["/both/theirs"]
        # Neither session can use the other's handle.
        crossed = curl(other, other_ws, mine, "/echo")
        assert "403" in crossed or "capability refused" in crossed, crossed
        assert "unknown capability handle" in crossed and SECRET not in crossed
        crossed = curl(rig.proxy, rig.ws, theirs, "/echo")
        assert "unknown capability handle" in crossed and SECRET not in crossed
    finally:
        other.close()
    # The first session still works once the other is gone.
    assert '"path": "/still"' in rig.run(f"curl -sS https://localhost:{rig.port}/still")


def test_a_second_mitmproxy_master_in_the_process_is_refused(rig: Rig) -> None:
    from agent.errors import SandboxError
    from agent.host.egress.proxy import EgressServer

    with pytest.raises(SandboxError, match="another egress server is running"):
        EgressServer().start()
    assert '"path": "/still"' in rig.run(f"curl -sS https://localhost:{rig.port}/still")


def test_a_redactor_that_cannot_be_built_breaks_the_response(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vault.errors import RedactionError

    def broken(session_id: str) -> Any:
        raise RedactionError("the session's secrets cannot be read")

    monkeypatch.setattr(rig.broker, "egress_redactor", broken)
    rig.proxy._redactor = None
    out = rig.run(f"curl -sS https://localhost:{rig.port}/unredacted")
    assert '"path"' not in out, out  # nothing unredacted reaches the sandbox
    assert any(kind == "egress_failed" for kind, _ in rig.hooks.records)


def test_the_forwarder_passes_on_the_commands_exit_status(rig: Rig) -> None:
    assert rig.run("exit 7").startswith("exit status 7")
    assert rig.run("kill -TERM $$").startswith("exit status 143")  # 128 + SIGTERM


def test_a_requests_audit_entry_does_not_hold_back_the_clients_next_request(
    rig: Rig, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The entry for /hold is written only once /next reached the server: that
    # needs the client to have had /hold's whole response first.
    arrived = threading.Event()
    released: list[bool] = []
    record = rig.hooks.record

    def slow_record(kind: str, **fields: Any) -> None:
        if kind == "egress_request" and "/hold" in fields["details"]["url"]:
            released.append(arrived.wait(10))
        record(kind, **fields)

    class Next(KeepAliveEcho):
        def do_GET(self) -> None:  # noqa: D102 (http.server's contract)
            if self.path == "/next":
                arrived.set()
            super().do_GET()

    monkeypatch.setattr(rig.hooks, "record", slow_record)
    with https_server(ca, Next) as httpd:
        port = httpd.server_address[1]
        out = rig.run(f"curl -sS --max-time 20 https://localhost:{port}/hold "
                      f"https://localhost:{port}/next")
    assert '"path": "/next"' in out, out
    assert released == [True]  # not a 10 s wait
    # The command returned only once its requests were audited.
    assert [k for k, _ in rig.hooks.records].count("egress_request") == 2
