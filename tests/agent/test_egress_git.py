"""git clone and git push over HTTPS through the egress proxy, the agent holding only a handle.

A loopback HTTPS server runs ``git http-backend`` (CGI) behind Basic auth
whose password is a vault secret. The command in the sandbox sets
``KEYLESS_GIT_PASSWORD=cap_…``; git asks the GIT_ASKPASS shim bound into the
sandbox, which answers the handle; the proxy swaps it for the secret on the
in-scope request. Real bubblewrap, real git, real mitmproxy.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent.host.egress.proxy import EgressProxy, EgressRequest, EgressVerdict
from agent.host.sandbox import Limits, Sandbox
from tests.agent.egresskit import https_server
from vault.audit import AuditLog
from vault.broker import Broker
from vault.grants import BasicAuthInjection, CapabilityGrant, GrantStore
from vault.keystore import NoKeyring
from vault.store import Argon2Params, Vault

SECRET = "ghp-egress-git-0123456789abcdef"
USER = "x-access-token"
SESSION = "git-session"
GIT = shutil.which("git")

pytestmark = pytest.mark.skipif(
    not Sandbox.detect().available or GIT is None, reason="needs bubblewrap and git"
)


class GitBackend(BaseHTTPRequestHandler):
    """``git http-backend`` as CGI, behind Basic auth; records the credentials it was sent."""

    protocol_version = "HTTP/1.1"
    root: Path
    seen_auth: list[str]

    def log_message(self, *args: Any) -> None:
        return

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        self.seen_auth.append(header)
        expected = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
        return header == expected

    def do_GET(self) -> None:  # noqa: D102 (http.server's contract)
        self._cgi(b"")

    def do_POST(self) -> None:  # noqa: D102
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._cgi(body)

    def _cgi(self, body: bytes) -> None:
        if not self._authorised():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": USER,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        out = subprocess.run([GIT or "git", "http-backend"], input=body, env=env,
                             capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            name, _, value = line.decode().partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class AllowLocalhost:
    def __init__(self) -> None:
        self.seen: list[EgressRequest] = []

    def decide(self, request: EgressRequest) -> EgressVerdict:
        self.seen.append(request)
        return EgressVerdict(request.host == "localhost", "test rule")

    def record(self, kind: str, **fields: Any) -> None:
        return None


def _git(*args: str, cwd: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run([GIT or "git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[int, Path, Path, list[str]]]:
    root = tmp_path / "srv"
    root.mkdir()
    seed = tmp_path / "seed"
    seed.mkdir()
    _git("init", "-q", "-b", "main", cwd=seed)
    (seed / "README").write_text("hello from the remote\n")
    _git("add", "README", cwd=seed)
    _git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "first", cwd=seed)
    _git("clone", "-q", "--bare", str(seed), str(root / "repo.git"), cwd=tmp_path)
    _git("config", "http.receivepack", "true", cwd=root / "repo.git")
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    seen: list[str] = []
    handler = type("Backend", (GitBackend,), {"root": root, "seen_auth": seen})
    with https_server(ca, handler) as httpd:
        yield httpd.server_address[1], root / "repo.git", ca_file, seen


def test_git_clone_and_push_with_only_a_handle(
    tmp_path: Path, remote: tuple[int, Path, Path, list[str]]
) -> None:
    port, bare, ca_file, seen_auth = remote
    vault = Vault.create(tmp_path / "vault.kls", passphrase="correct horse", use_keyring=False,
                         keystore=NoKeyring(), kdf=Argon2Params(iterations=1, lanes=1,
                         memory_kib=64), idle_timeout=None)
    vault.add("GIT_TOKEN", SECRET.encode())
    db = tmp_path / "keyless.db"
    broker = Broker(vault, GrantStore(db), AuditLog(db), resolver=lambda h, p: ["127.0.0.1"])
    handle = broker.grant(CapabilityGrant(
        secret_name="GIT_TOKEN", session_id=SESSION, injection=BasicAuthInjection(username=USER),
        methods=("GET", "POST"), host="localhost", port=port, path_pattern="/repo.git/*",
        allow_local=True, approved_by="test", approved_at=datetime.now(UTC),
    )).handle
    hooks = AllowLocalhost()
    proxy = EgressProxy(hooks, broker, session_id=SESSION, local_hosts=["localhost"],
                        upstream_ca=ca_file, resolver=lambda h, p: ["127.0.0.1"])
    proxy.start()
    ws = tmp_path / "ws"
    ws.mkdir()
    url = f"https://localhost:{port}/repo.git"
    script = (
        f"export KEYLESS_GIT_PASSWORD={handle}; "
        f"git clone -q {url} clone && cat clone/README && cd clone && "
        "echo pushed > NEW && git add NEW && "
        "git -c user.name=agent -c user.email=a@e commit -qm second && "
        "git push -q origin main && echo PUSH-OK"
    )
    try:
        result = Sandbox.detect().run_shell(script, ws, Limits(wall_seconds=60), egress=proxy)
    finally:
        proxy.close()
        broker.close()
    out = result.describe()
    assert "hello from the remote" in out, out
    assert "PUSH-OK" in out, out
    assert SECRET not in out
    log = subprocess.run([GIT or "git", "--git-dir", str(bare), "log", "--format=%s", "main"],
                         capture_output=True, text=True, check=True).stdout
    assert log.split() == ["second", "first"]
    # The server saw the secret; the sandbox only ever sent the handle.
    expected = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    assert expected in seen_auth
    assert not any(handle in base64.b64decode(a[6:] or b"").decode(errors="replace")
                   for a in seen_auth if a.startswith("Basic "))
    assert {r.method for r in hooks.seen} >= {"GET", "POST"}
