"""The host side of the egress proxy: mitmproxy, run as a library, with Keyless's addon.

One :class:`EgressProxy` serves one session. It runs mitmproxy's
:class:`~mitmproxy.master.Master` in its own asyncio loop on a host thread,
listening on a loopback TCP port that only its own Unix-socket bridges reach:
each bridge binds its source port before it connects and the addon drops any
client whose port it did not register (another local process reaching the
port gets nothing). :meth:`EgressProxy.channel` opens one Unix socket per
shell command, bound into that command's sandbox.

For every request (HTTP, or HTTPS intercepted with the per-session CA) the
addon:

1. asks the host (:class:`EgressHooks`) whether the host, method and path may
   be reached: the policy engine's ``net(...)`` rules, the permission prompt,
   the taint (a request carrying a capability asks once untrusted content is
   in the context), the audit log;
2. finds ``cap_`` handles anywhere in the headers (a Basic password, a
   Bearer token, any value) or the query; for one, the broker checks the
   grant's scope, spends a use and hands the secret, which replaces every
   credential the sandbox sent, where the grant says;
3. connects only to addresses it checked (private and loopback refused unless
   the host built the proxy with an explicit override);
4. streams the response back through the broker's redactor, after undoing
   any content encoding, so no form of a secret reaches the sandbox.

Hosts the user pins pass through without interception and never carry a
capability.

Why one module of about 800 lines: the proxy's lifecycle (its loop, its
listener, the bridges and their registered ports) and the addon's hooks share
one state and one threat model (nothing unchecked leaves, nothing unredacted
comes back), and are tested together in ``tests/agent/test_egress.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import brotli  # type: ignore[import-untyped]
import certifi
import zstandard
from mitmproxy import certs, http
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
from mitmproxy.connection import Client
from mitmproxy.master import Master
from mitmproxy.options import Options
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.tls import ClientHelloData

from agent.errors import SandboxError
from agent.host.egress.ca import SessionCA, mint_ca

log = logging.getLogger(__name__)

#: The port the forwarder listens on inside each sandbox (its own network namespace).
SANDBOX_PROXY_PORT = 3128
#: Where the socket and the CA bundle appear inside the sandbox.
SANDBOX_DIR = "/run/keyless"
SANDBOX_SOCKET = f"{SANDBOX_DIR}/egress.sock"
SANDBOX_CA_BUNDLE = f"{SANDBOX_DIR}/ca-bundle.pem"
SANDBOX_FORWARDER = f"{SANDBOX_DIR}/forwarder.py"
FORWARDER_SOURCE = Path(__file__).with_name("forwarder.py")
#: git's GIT_ASKPASS in the sandbox: answers with ``KEYLESS_GIT_PASSWORD`` (a handle).
SANDBOX_ASKPASS = f"{SANDBOX_DIR}/askpass"
ASKPASS_SOURCE = Path(__file__).with_name("askpass.sh")
_HANDLE_RE = re.compile(rb"cap_[0-9a-f]{32}")
_HANDLE_TEXT_RE = re.compile(r"cap_[0-9a-f]{32}")
_CA_VARS = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
)


@dataclass(frozen=True)
class EgressRequest:
    """One proxied request, as the host's rules and prompt see it.

    Attributes:
        command: The shell command that made it.
        scheme: ``https`` or ``http``.
        host: The destination host (lower case).
        port: The destination port.
        method: The HTTP method (``CONNECT`` for a pinned host's tunnel).
        path: The path, without the query.
        capability: The ``cap_`` handle the request carries, if any.
    """

    command: str
    scheme: str
    host: str
    port: int
    method: str
    path: str
    capability: str | None = None


@dataclass(frozen=True)
class EgressVerdict:
    """The host's answer: allowed or not, and why (told to the command on a refusal)."""

    allowed: bool
    reason: str


class EgressHooks(Protocol):
    """What the proxy needs of the host; both are called on a worker thread."""

    def decide(self, request: EgressRequest) -> EgressVerdict:
        """Decide one request (rules, prompt, taint); may block on the user."""
        ...

    def record(self, kind: str, **fields: Any) -> None:
        """Append an audit entry (never with a secret in it)."""
        ...


class Redemption(Protocol):
    """What the broker hands back for an in-scope handle."""

    secret_name: str
    injection: Any
    secret: bytearray
    addresses: list[Any]


class EgressBroker(Protocol):
    """The broker methods the proxy uses (see :class:`vault.broker.Broker`)."""

    def redeem_egress(
        self, handle: str, *, method: str, url: str, session_id: str, command: str
    ) -> Any:
        """Check the grant's scope for this request, spend a use, return the secret."""
        ...

    def egress_redactor(self, session_id: str) -> Any:
        """A redactor over every secret (bytes seen as latin-1 text)."""
        ...


@dataclass
class EgressChannel:
    """One command's way out: the host socket to bind in and the environment to set."""

    socket_path: Path
    ca_bundle: Path
    env: dict[str, str]
    label: str


@dataclass
class _Decoded:
    """Streaming content decoders for one response (outermost encoding last)."""

    steps: list[Callable[[bytes], bytes]] = field(default_factory=list)

    def feed(self, data: bytes) -> bytes:
        for step in self.steps:
            data = step(data)
        return data


def _decoder(encoding: str) -> Callable[[bytes], bytes] | None:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return lambda data: data
    if name in ("gzip", "x-gzip"):
        z = zlib.decompressobj(wbits=47)
        return lambda data: z.decompress(data) if data else z.flush()
    if name == "deflate":
        d = zlib.decompressobj()
        return lambda data: d.decompress(data) if data else d.flush()
    if name == "br":
        b = brotli.Decompressor()
        return lambda data: b.process(data) if data else b""
    if name == "zstd":
        zs = zstandard.ZstdDecompressor().decompressobj()
        return lambda data: zs.decompress(data) if data else b""
    return None


class _SessionTls(tlsconfig.TlsConfig):
    """mitmproxy's TLS addon with the session CA in memory (no confdir, nothing on disk)."""

    def __init__(self, ca: SessionCA, dhparam: Path) -> None:
        super().__init__()
        # mitmproxy's stock DH parameters (public); it loads them from a file.
        dhparam.write_bytes(certs.DEFAULT_DHPARAM)
        self.certstore = certs.CertStore(
            ca.key, certs.Cert(ca.cert), None, certs.CertStore.load_dhparam(dhparam)
        )

    def configure(self, updated: Any) -> None:
        """Keep the in-memory store: the stock addon would load or write a CA in confdir."""

    def running(self) -> None:
        """As :meth:`configure`."""


class _Addon:
    """The mitmproxy addon: decisions, handle swaps, address checks, redaction."""

    def __init__(self, proxy: EgressProxy) -> None:
        self.proxy = proxy

    # A client that did not come through one of our bridges is dropped at once.
    def client_connected(self, client: Client) -> None:
        port = client.peername[1] if client.peername else None
        if port not in self.proxy._bridges:
            client.error = "not a Keyless sandbox"

    async def tls_clienthello(self, data: ClientHelloData) -> None:
        address = data.context.server.address or ("", 443)
        host = (data.client_hello.sni or address[0] or "").lower()
        if host not in self.proxy.pinned_hosts:
            return
        request = EgressRequest(
            command=self.proxy._label(data.context.client),
            scheme="https",
            host=host,
            port=address[1],
            method="CONNECT",
            path="",
        )
        verdict = await asyncio.to_thread(self.proxy._decide, request)
        if verdict.allowed:
            data.ignore_connection = True  # a tunnel: the bytes go through untouched
        else:
            data.context.client.error = verdict.reason

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        await self.proxy._on_request(flow)

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        await self.proxy._on_connect(data)

    def server_connected(self, data: ServerConnectionHookData) -> None:
        self.proxy._on_connected(data)

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        self.proxy._named.pop(data.server.id, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self.proxy._on_response_headers(flow)

    async def response(self, flow: http.HTTPFlow) -> None:
        await self.proxy._on_done(flow, failed=None)

    async def error(self, flow: http.HTTPFlow) -> None:
        if flow.response is None and flow.error is not None:
            await self.proxy._on_done(flow, failed=flow.error.msg)


# mitmproxy keeps its master and options in module globals (``mitmproxy.ctx``):
# a second master in the process takes them over from the first, which then
# fails its clients. So one proxy runs at a time, and a second start says why.
_active_lock = threading.Lock()
_active: EgressProxy | None = None


def _system_bundle() -> bytes:
    for path in ("/etc/ssl/certs/ca-certificates.crt", certifi.where()):
        with contextlib.suppress(OSError):
            return Path(path).read_bytes()
    return b""


class EgressProxy:
    """The egress proxy of one session (see the module doc).

    Args:
        hooks: The host: rules and prompt for each request, and the audit log.
        broker: Redeems handles and redacts responses; None: no capability
            can be used and responses are not redacted (no vault is open).
        session_id: The session whose grants may be redeemed.
        pinned_hosts: Hosts passed through without interception (never with a
            capability).
        local_hosts: Hosts that may resolve to loopback or private addresses.
            Only the host builds this (a test server, a service the user
            trusts); the agent never sets it.
        upstream_ca: A CA file to verify upstream servers with instead of the
            system's (tests); None: the system bundle.
        resolver: Host name to addresses (tests pin one).
    """

    def __init__(
        self,
        hooks: EgressHooks,
        broker: EgressBroker | None,
        *,
        session_id: str,
        pinned_hosts: Iterable[str] = (),
        local_hosts: Iterable[str] = (),
        upstream_ca: Path | None = None,
        resolver: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.hooks = hooks
        self.broker = broker
        self.session_id = session_id
        self.pinned_hosts = frozenset(h.lower().rstrip(".") for h in pinned_hosts)
        self.local_hosts = frozenset(h.lower().rstrip(".") for h in local_hosts)
        self.upstream_ca = upstream_ca
        self._resolver = resolver
        self._bridges: dict[int, str] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master: Master | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._dir: Path | None = None
        self._ca: SessionCA | None = None
        self._count = 0
        self._redactor: Any = None
        self._named: dict[str, tuple[str, int]] = {}

    # ------------------------------------------------------------------ lifetime

    @property
    def running(self) -> bool:
        """Whether the proxy is up."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 15.0) -> None:
        """Mint the session CA and start mitmproxy on its own thread.

        Raises:
            SandboxError: The proxy did not come up.
        """
        if self.running:
            return
        global _active
        with _active_lock:
            if _active is not None and _active is not self and _active.running:
                raise SandboxError(
                    "the egress proxy did not start: another session's proxy is running in "
                    "this process (mitmproxy keeps one master per process)"
                )
            _active = self
        self._ca = mint_ca()
        self._dir = Path(tempfile.mkdtemp(prefix="keyless-egress-"))
        os.chmod(self._dir, 0o700)
        bundle = self._dir / "ca-bundle.pem"
        bundle.write_bytes(_system_bundle() + b"\n" + self._ca.cert_pem)
        shutil.copyfile(FORWARDER_SOURCE, self._dir / "forwarder.py")
        shutil.copyfile(ASKPASS_SOURCE, self._dir / "askpass")
        os.chmod(self._dir / "askpass", 0o755)
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failure), name="keyless-egress", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout) or failure or not self._port:
            self.close()
            why = failure[0] if failure else "timeout"
            raise SandboxError(f"the egress proxy did not start: {why}")

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._master = self._build_master(loop)
        except Exception as e:  # reported to start(); the thread ends
            failure.append(e)
            ready.set()
            loop.close()
            return
        master = self._master

        async def main() -> None:
            run = asyncio.ensure_future(master.run())
            server = master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
            for _ in range(500):
                addrs = server.listen_addrs() if server is not None else []
                if addrs or run.done():
                    break
                await asyncio.sleep(0.01)
            if addrs:
                self._port = int(addrs[0][1])
            ready.set()
            await run

        try:
            loop.run_until_complete(main())
        except BaseException as e:  # reported to start(); the thread ends
            failure.append(e)
            ready.set()
        finally:
            with contextlib.suppress(Exception):
                loop.close()

    def _build_master(self, loop: asyncio.AbstractEventLoop) -> Master:
        assert self._ca is not None and self._dir is not None
        master = Master(Options(), event_loop=loop)
        # The few addons a proxy needs; options exist once their addons are in.
        master.addons.add(  # type: ignore[no-untyped-call]
            core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(),  # type: ignore[no-untyped-call]
            _SessionTls(self._ca, self._dir / "dhparam.pem"), _Addon(self),
        )
        master.options.update(  # type: ignore[no-untyped-call]
            mode=["regular@127.0.0.1:0"],
            connection_strategy="lazy",
            http2=False,
            ssl_insecure=False,
        )
        if self.upstream_ca is not None:
            master.options.update(ssl_verify_upstream_trusted_ca=str(self.upstream_ca))  # type: ignore[no-untyped-call]
        return master

    def close(self) -> None:
        """Stop the proxy and remove its directory (sockets, CA bundle)."""
        loop, master = self._loop, self._master
        if loop is not None and master is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(master.shutdown)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        global _active
        with _active_lock:
            if _active is self:
                _active = None

    # ------------------------------------------------------------------ channels

    @contextlib.contextmanager
    def channel(self, command: str) -> Iterator[EgressChannel]:
        """A Unix socket for one command, and the environment that points programs at it.

        Raises:
            SandboxError: The proxy is not running.
        """
        if not self.running or self._loop is None or self._dir is None:
            raise SandboxError("the egress proxy is not running")
        self._count += 1
        path = self._dir / f"egress-{self._count}.sock"
        label = command
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(lambda r, w: self._bridge(label, r, w), path=str(path)),
            self._loop,
        ).result(10)
        try:
            yield EgressChannel(path, self._dir / "ca-bundle.pem", proxy_env(), label)
        finally:
            server.close()
            with contextlib.suppress(OSError):
                path.unlink()

    @property
    def forwarder(self) -> Path:
        """The forwarder script the sandbox runs (a copy in the proxy's directory)."""
        if self._dir is None:
            raise SandboxError("the egress proxy is not running")
        return self._dir / "forwarder.py"

    async def _bridge(
        self, label: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self._bridges[port] = label  # registered before the proxy can see the connection
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", self._port))
            up_r, up_w = await asyncio.open_connection(sock=sock)
        except OSError:
            self._bridges.pop(port, None)
            sock.close()
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                pass

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self._bridges.pop(port, None)
            for w in (writer, up_w):
                with contextlib.suppress(OSError):
                    w.close()

    def _label(self, client: Client) -> str:
        port = client.peername[1] if client.peername else -1
        return self._bridges.get(port, "?")

    # ------------------------------------------------------------------ requests

    def _decide(self, request: EgressRequest) -> EgressVerdict:
        """The host's verdict; a host that cannot decide (its audit log failed) refuses."""
        try:
            return self.hooks.decide(request)
        except Exception as e:  # fail closed: nothing leaves undecided or unaudited
            log.warning("egress decision failed: %s", type(e).__name__)
            return EgressVerdict(False, f"the host could not decide this request: {e}")

    async def _on_request(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host = req.pretty_host.lower().rstrip(".")
        handles = _handles(req)
        command = self._label(flow.client_conn)
        flow.metadata["keyless_command"] = command
        if len(handles) > 1:
            self._refuse(flow, "more than one capability handle in one request")
            await asyncio.to_thread(self._audit_refusal, flow, "several handles", None)
            return
        handle = next(iter(handles), None)
        if handle is not None and host in self.pinned_hosts:
            self._refuse(flow, f"{host} is pinned (not intercepted): it cannot carry a capability")
            await asyncio.to_thread(self._audit_refusal, flow, "pinned host", handle)
            return
        request = EgressRequest(
            command=command,
            scheme=req.scheme,
            host=host,
            port=req.port,
            method=req.method.upper(),
            path=req.path.split("?", 1)[0],
            capability=handle,
        )
        verdict = await asyncio.to_thread(self._decide, request)
        if not verdict.allowed:
            self._refuse(flow, verdict.reason)
            return
        if handle is not None:
            await self._substitute(flow, handle, command)
        if flow.response is None:
            flow.request.stream = True

    async def _substitute(self, flow: http.HTTPFlow, handle: str, command: str) -> None:
        from vault.broker import is_auth_header  # noqa: PLC0415 (vault stays optional here)
        from vault.errors import GrantRefused, VaultError  # noqa: PLC0415

        if self.broker is None:
            self._refuse(flow, "no vault is open: the capability cannot be used")
            return
        req = flow.request
        url = req.url
        # The handle (and only it) leaves the query before the scope check.
        for name, value in list(req.query.items(multi=True)):
            if handle in value:
                del req.query[name]
        try:
            redemption = await asyncio.to_thread(
                self.broker.redeem_egress,
                handle,
                method=req.method.upper(),
                url=_without_handle(url, handle),
                session_id=self.session_id,
                command=command,
            )
        except GrantRefused as e:
            self._refuse(flow, f"capability refused: {e.reason}")
            return
        except VaultError as e:
            self._refuse(flow, f"capability unavailable: {e}")
            return
        self._redactor = None  # the redactor must know this secret from now on
        try:
            for name in {n.lower() for n in req.headers}:
                values = req.headers.get_all(name)
                if is_auth_header(name) or any(_has_handle_text(v) for v in values):
                    del req.headers[name]
            _inject(req, redemption.injection, redemption.secret)
            flow.metadata["keyless_addresses"] = [str(a) for a in redemption.addresses]
            flow.metadata["keyless_handle"] = handle
            flow.metadata["keyless_secret"] = redemption.secret_name
        finally:
            redemption.secret[:] = b"\x00" * len(redemption.secret)

    async def _on_connect(self, data: ServerConnectionHookData) -> None:
        from vault.errors import GrantRefused  # noqa: PLC0415
        from vault.urls import check_addresses, resolve, system_resolver  # noqa: PLC0415

        address = data.server.address
        if address is None:
            data.server.error = "no destination"
            return
        host, port = str(address[0]).lower().rstrip("."), int(address[1])
        resolver = self._resolver or system_resolver
        try:
            addresses = await asyncio.to_thread(resolve, host, port, resolver)
            check_addresses(host, addresses, allow_local=host in self.local_hosts)
        except GrantRefused as e:
            data.server.error = f"refused: {e.reason}"
            return
        # Connect to the address checked, never to a second DNS answer; the name
        # comes back once connected (:meth:`_on_connected`), or mitmproxy would
        # never reuse the connection (it matches by address) and would stall a
        # kept-alive client at its per-address limit of 5 open connections.
        self._named[data.server.id] = (host, port)
        data.server.address = (str(addresses[0]), port)

    def _on_connected(self, data: ServerConnectionHookData) -> None:
        name = self._named.pop(data.server.id, None)
        if name is not None:
            # mitmproxy refuses a new address on an open connection (a guard for
            # addons that would redirect it); this one only gets its name back,
            # and the peer stays in ``peername``. Pinned to mitmproxy 11.0.2.
            object.__setattr__(data.server, "address", name)

    def _on_response_headers(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or flow.metadata.get("keyless_refused"):
            return
        redactor = self._current_redactor()
        found: set[str] = set()
        if redactor is not None:
            for name in {n.lower() for n in response.headers}:
                values = response.headers.get_all(name)
                clean = []
                for value in values:
                    text, names = redactor.redact(value)
                    clean.append(text)
                    found.update(names)
                response.headers.set_all(name, clean)
        flow.metadata["keyless_redacted"] = found
        header = response.headers.get("content-encoding", "")
        encodings = [e for e in header.split(",") if e.strip()]
        decoded = _Decoded()
        for encoding in reversed(encodings):
            step = _decoder(encoding)
            if step is None:
                flow.metadata["keyless_failed"] = f"unknown content encoding {encoding.strip()!r}"
                flow.kill()  # type: ignore[no-untyped-call]
                return
            decoded.steps.append(step)
        if redactor is None and not decoded.steps:
            response.stream = True
            return
        response.headers.pop("content-encoding", None)
        response.headers.pop("content-length", None)
        response.headers["transfer-encoding"] = "chunked"
        stream = redactor.stream() if redactor is not None else None

        def chunks(data: bytes) -> list[bytes]:
            plain = decoded.feed(data)
            if stream is None:
                out = plain
            else:
                text = stream.feed(plain.decode("latin-1"))
                if not data:
                    text += stream.finish()
                    found.update(stream.found)
                out = text.encode("latin-1", errors="replace")
            return [out] if out else []

        response.stream = chunks

    def _current_redactor(self) -> Any:
        if self.broker is None:
            return None
        if self._redactor is None:
            self._redactor = self.broker.egress_redactor(self.session_id)
        return self._redactor

    async def _on_done(self, flow: http.HTTPFlow, *, failed: str | None) -> None:
        if flow.metadata.get("keyless_refused"):
            return
        req = flow.request
        details: dict[str, Any] = {
            "command": flow.metadata.get("keyless_command", "?"),
            "method": req.method,
            "url": _url_for_log(req),
            "status": flow.response.status_code if flow.response is not None else None,
            "redacted": sorted(flow.metadata.get("keyless_redacted", ())),
        }
        if "keyless_handle" in flow.metadata:
            details["handle"] = flow.metadata["keyless_handle"]
            details["secret"] = flow.metadata["keyless_secret"]
        reason = failed or flow.metadata.get("keyless_failed")
        await asyncio.to_thread(
            self.hooks.record,
            "egress_request" if reason is None else "egress_failed",
            tool="shell",
            decision="allow",
            reason=reason,
            details=details,
        )

    def _audit_refusal(self, flow: http.HTTPFlow, reason: str, handle: str | None) -> None:
        self.hooks.record(
            "egress_refused",
            tool="shell",
            decision="deny",
            reason=reason,
            details={
                "command": flow.metadata.get("keyless_command", "?"),
                "method": flow.request.method,
                "url": _url_for_log(flow.request),
                **({"handle": handle} if handle else {}),
            },
        )

    @staticmethod
    def _refuse(flow: http.HTTPFlow, reason: str) -> None:
        flow.metadata["keyless_refused"] = True
        flow.response = http.Response.make(
            403,
            f"Keyless egress refused this request: {reason}\n".encode(),
            {"content-type": "text/plain; charset=utf-8", "x-keyless-refused": "1"},
        )


def proxy_env() -> dict[str, str]:
    """The variables that point a sandboxed command at the forwarder and the CA bundle."""
    url = f"http://127.0.0.1:{SANDBOX_PROXY_PORT}"
    env = {name: url for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    env.update({name.lower(): url for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")})
    env["NO_PROXY"] = env["no_proxy"] = ""
    env.update({name: SANDBOX_CA_BUNDLE for name in _CA_VARS})
    # git over HTTPS asks the shim, never a terminal: the password is the handle
    # the command put in KEYLESS_GIT_PASSWORD.
    env["GIT_ASKPASS"] = SANDBOX_ASKPASS
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _has_handle_text(value: str) -> bool:
    import base64  # noqa: PLC0415

    if _HANDLE_TEXT_RE.search(value):
        return True
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            return bool(_HANDLE_RE.search(base64.b64decode(token.strip(), validate=True)))
    return False


def _handles(req: http.Request) -> set[str]:
    """Every distinct handle in the headers (Basic credentials decoded) and the query."""
    import base64  # noqa: PLC0415

    found: set[str] = set()
    for _, value in req.headers.items(multi=True):  # type: ignore[no-untyped-call]
        found.update(_HANDLE_TEXT_RE.findall(value))
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "basic":
            with contextlib.suppress(ValueError):
                raw = base64.b64decode(token.strip(), validate=True)
                found.update(m.decode("ascii") for m in _HANDLE_RE.findall(raw))
    found.update(_HANDLE_TEXT_RE.findall(req.path))
    return found


def _without_handle(url: str, handle: str) -> str:
    return url.replace(handle, "")


def _url_for_log(req: http.Request) -> str:
    return f"{req.scheme}://{req.pretty_host}:{req.port}{req.path.split('?', 1)[0]}"[:2000]


def _inject(req: http.Request, injection: Any, secret: bytearray) -> None:
    """Put the secret where the grant says (the broker's three ways)."""
    import base64  # noqa: PLC0415

    from vault.grants import BasicAuthInjection, HeaderInjection  # noqa: PLC0415

    if isinstance(injection, HeaderInjection):
        prefix, _, suffix = injection.template.partition("{}")
        value = prefix.encode("ascii") + bytes(secret) + suffix.encode("ascii")
        req.headers.fields = (*req.headers.fields, (injection.header.encode("ascii"), value))
    elif isinstance(injection, BasicAuthInjection):
        token = base64.b64encode(injection.username.encode("utf-8") + b":" + bytes(secret))
        req.headers.fields = (*req.headers.fields, (b"Authorization", b"Basic " + token))
    else:
        req.query[injection.param] = bytes(secret).decode("utf-8")


Kind = Literal["egress_request", "egress_failed", "egress_refused"]
