"""End to end: http_request with a capability handle, through the real worker and broker.

The scripted model (in the real agent process) calls a local HTTPS server
(trustme CA) that echoes the Authorization header back. The broker injects the
secret, the echo comes back redacted, and no form of the secret ever crosses
the pipe to the agent process: every line the host sends is recorded and
scanned, as is every line it receives, and the audit log.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trustme

from agent.host.permission import PermissionAnswer
from tests.agent.hostkit import Rig, call, final, make_rig
from vault._crypto import Argon2Params
from vault.audit import AuditLog
from vault.broker import Broker
from vault.grants import CapabilityGrant, GrantStore, header_injection
from vault.keystore import NoKeyring
from vault.redact import secret_forms
from vault.store import Vault

SECRET = b"sk-e2e-" + b"Qw8+/mZ3=Lp0" + b"Rt5yUi9oPa1s"
SESSION = "session-1"
LEAKY_TOKEN = "ghp_" + "R7mK2pX9vQ4tL8nW3sY6zB1cD5fH0jA2eG4k"


class Echo(BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        body = f"you sent: {auth}".encode()
        if self.path.endswith("/leaky"):
            # A credential the vault does not know, as a careless API might echo it.
            body += f"\ndeploy_token: {LEAKY_TOKEN}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        return


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server(ca: trustme.CA) -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def broker(tmp_path: Path, ca: trustme.CA) -> Iterator[Broker]:
    vault = Vault.create(
        tmp_path / "vault.kls",
        passphrase="correct horse",
        use_keyring=False,
        keystore=NoKeyring(),
        kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64),
        idle_timeout=None,
    )
    vault.add("API_TOKEN", SECRET)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    db = tmp_path / "keyless.db"
    b = Broker(
        vault,
        GrantStore(db),
        AuditLog(db),
        transport=httpx.HTTPTransport(verify=ctx, retries=0),
        resolver=lambda host, port: ["127.0.0.1"],
    )
    yield b
    b.close()


def grant(broker: Broker, port: int) -> str:
    now = datetime.now(UTC)
    info = broker.grant(
        CapabilityGrant(
            secret_name="API_TOKEN",
            injection=header_injection("Authorization: Bearer {}"),
            methods=("GET",),
            host="localhost",
            port=port,
            path_pattern="/echo/*",
            session_id=SESSION,
            approved_by="test",
            approved_at=now,
            allow_local=True,
        ),
        now=now,
    )
    return info.handle


def assert_secret_absent(data: bytes | str) -> None:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    for form in secret_forms(SECRET):
        assert form not in text, f"a form of the secret ({form[:6]}...) leaked"


def run(tmp_path: Path, workspace: Path, broker: Broker, replies: list[str], **kw: object) -> Rig:
    rig = make_rig(
        tmp_path,
        workspace,
        replies,
        broker=broker,
        answers=[PermissionAnswer(choice="once")] * 3,
        **kw,  # type: ignore[arg-type]
    )
    rig.host.run_errand("call the echo API with my token")
    rig.host.close()
    return rig


def test_the_echoed_secret_comes_back_redacted_and_never_reaches_the_agent(
    tmp_path: Path, workspace: Path, broker: Broker, server: int
) -> None:
    handle = grant(broker, server)
    url = f"https://localhost:{server}/echo/me"
    rig = run(
        tmp_path,
        workspace,
        broker,
        [call("http_request", url=url, capability=handle), final("The API answered.")],
    )
    # The server got the real secret: the broker injected it.
    assert Echo.seen[-1] == "Bearer " + SECRET.decode()
    # The agent saw the handle (in its task) and a redacted echo.
    [task] = rig.transcript.sent_of("task")
    assert [c["handle"] for c in task["capabilities"]] == [handle]
    [result] = rig.transcript.sent_of("tool_result")
    assert result["ok"] is True and result["untrusted"] is True
    assert result["redacted"] == ["API_TOKEN"]
    assert "you sent: Bearer [REDACTED" in result["content"]
    # Nothing the host sent or received holds any form of the secret.
    assert rig.transcript.sent and rig.transcript.received
    for line in rig.transcript.sent + rig.transcript.received:
        assert_secret_absent(line)
    for event in rig.events:
        assert_secret_absent(event.text)
        assert_secret_absent(repr(event.data))
    for entry in rig.audit.entries():
        assert_secret_absent(entry.model_dump_json())
    assert rig.audit.verify().ok
    [asked] = rig.prompt.asked
    assert asked.tool == "http_request" and asked.arguments["capability"] == handle


def test_a_call_outside_the_grant_is_refused_and_no_secret_is_sent(
    tmp_path: Path, workspace: Path, broker: Broker, server: int
) -> None:
    handle = grant(broker, server)
    before = len(Echo.seen)
    url = f"https://localhost:{server}/admin/delete"
    rig = run(
        tmp_path,
        workspace,
        broker,
        [call("http_request", url=url, capability=handle), final("refused")],
    )
    assert len(Echo.seen) == before  # the request never left
    [result] = rig.transcript.sent_of("tool_result")
    assert result["ok"] is False
    assert result["content"].startswith("error: the broker refused the request:")
    assert "refuse" in [e.kind for e in rig.audit.entries()]


def test_a_forged_handle_is_refused(
    tmp_path: Path, workspace: Path, broker: Broker, server: int
) -> None:
    grant(broker, server)
    forged = "cap_" + "0" * 32
    url = f"https://localhost:{server}/echo/me"
    rig = run(
        tmp_path,
        workspace,
        broker,
        [call("http_request", url=url, capability=forged), final("refused")],
    )
    [result] = rig.transcript.sent_of("tool_result")
    assert result["ok"] is False and "refused" in result["content"]
    for line in rig.transcript.sent:
        assert_secret_absent(line)
