"""The host side of the egress proxy: mitmproxy, run as a library, with Keyless's addon.

One :class:`EgressServer` runs in the process (mitmproxy keeps its master in
module globals): mitmproxy's :class:`~mitmproxy.master.Master` in its own
asyncio loop on a host thread. Each session (an errand in the app, ``keyless
run``) has an :class:`EgressProxy` attached to it, with its own rules, broker,
CA and redactor; :meth:`EgressProxy.channel` opens one Unix socket per shell
command, bound into that command's sandbox. Each connection on it is handed
straight to mitmproxy with a numbered peer (above any TCP port) registered
with its session and command first; the addon routes every client to that
session and drops any other (mitmproxy must also listen on a loopback TCP
port: another local process reaching it gets nothing).

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

Why one module of about 1000 lines: the server's lifecycle (its loop, its
listener, the sandbox connections and their numbered peers), the sessions'
routes and the addon's hooks share one state and one threat model (nothing
unchecked leaves, nothing unredacted comes back, no session reaches
another's grants), and are tested together in ``tests/agent/test_egress.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections import OrderedDict
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


class _RoutingTls(tlsconfig.TlsConfig):
    """mitmproxy's TLS addon, signing each client's leaf with its session's CA.

    The CAs stay in memory (no confdir, nothing on disk): each session's
    :class:`EgressProxy` holds its own ``CertStore``, picked per connection.
    """

    def __init__(self, server: EgressServer) -> None:
        super().__init__()
        self.server = server

    def configure(self, updated: Any) -> None:
        """Keep the in-memory stores: the stock addon would load or write a CA in confdir."""

    def running(self) -> None:
        """As :meth:`configure`."""

    def tls_start_client(self, tls_start: Any) -> None:
        """Sign with the CA of the session whose sandbox this client is."""
        route = self.server._route_of(tls_start.context.client)
        if route is None or route._certstore is None:
            tls_start.conn.error = "not a Keyless sandbox"
            return
        # Synchronous on the proxy's one loop: nothing else runs in between.
        self.certstore = route._certstore
        super().tls_start_client(tls_start)


class _Addon:
    """The mitmproxy addon: routes each client to its session, which decides and redacts."""

    def __init__(self, server: EgressServer) -> None:
        self.server = server

    # A client that is not a registered sandbox connection is dropped at once.
    def client_connected(self, client: Client) -> None:
        port = client.peername[1] if client.peername else None
        peer = self.server._peers.get(port) if port is not None else None
        if peer is None:
            client.error = "not a Keyless sandbox"
            return
        self.server._clients[client.id] = peer

    def client_disconnected(self, client: Client) -> None:
        self.server._clients.pop(client.id, None)

    async def tls_clienthello(self, data: ClientHelloData) -> None:
        route = self.server._route_of(data.context.client)
        if route is None:
            data.context.client.error = "not a Keyless sandbox"
            return
        await route._on_clienthello(data)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        route = self.server._route_of(flow.client_conn)
        if route is None:
            flow.kill()  # type: ignore[no-untyped-call]
            return
        await route._on_request(flow)

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        route = self.server._route_of(data.client)
        if route is None:
            data.server.error = "not a Keyless sandbox"
            return
        await route._on_connect(data)

    def server_connected(self, data: ServerConnectionHookData) -> None:
        self.server._on_connected(data)

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        self.server._named.pop(data.server.id, None)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        route = self.server._route_of(flow.client_conn)
        if route is None:
            flow.kill()  # type: ignore[no-untyped-call]
            return
        try:
            route._on_response_headers(flow)
        except Exception as e:  # fail closed: mitmproxy would log it and pass the body on
            log.warning("egress response refused: %s", type(e).__name__)
            flow.metadata["keyless_failed"] = f"the response could not be redacted: {e}"
            flow.kill()  # type: ignore[no-untyped-call]

    async def response(self, flow: http.HTTPFlow) -> None:
        route = self.server._route_of(flow.client_conn, flow)
        if route is not None:
            await route._on_done(flow, failed=None)

    async def error(self, flow: http.HTTPFlow) -> None:
        route = self.server._route_of(flow.client_conn, flow)
        if route is None or flow.error is None:
            return
        if flow.response is None or flow.metadata.get("keyless_failed"):
            await route._on_done(flow, failed=flow.metadata.get("keyless_failed", flow.error.msg))


def _system_bundle() -> bytes:
    for path in ("/etc/ssl/certs/ca-certificates.crt", certifi.where()):
        with contextlib.suppress(OSError):
            return Path(path).read_bytes()
    return b""


# mitmproxy keeps its master and options in module globals (``mitmproxy.ctx``):
# a second master in the process takes them over from the first, which then
# fails its clients. So one server runs at a time, and every session shares it.
_active_lock = threading.Lock()
_active: EgressServer | None = None
_shared: EgressServer | None = None


class EgressServer:
    """The process's one mitmproxy master, shared by every session's :class:`EgressProxy`.

    It runs in its own asyncio loop on a host thread. Sessions' Unix sockets
    hand their connections to it directly (:meth:`_accept`), each registered
    with its session and command under a peer number no TCP client can have;
    the addon maps each client to that session (its rules, broker, CA,
    redactor) and drops any other client.

    Args:
        upstream_ca: A CA file to verify upstream servers with instead of the
            system's (tests); None: the system bundle. mitmproxy reads it
            from its process-wide options, so it is the server's, not a
            session's.
    """

    def __init__(self, upstream_ca: Path | None = None) -> None:
        self.upstream_ca = upstream_ca
        self._peers: dict[int, tuple[EgressProxy, str]] = {}
        self._clients: dict[str, tuple[EgressProxy, str]] = {}
        self._routes: set[EgressProxy] = set()
        self._named: dict[str, tuple[str, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master: Master | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._dir: Path | None = None
        self._dhparams: Any = None
        self._instance: Any = None
        self._accepted = 0

    @property
    def running(self) -> bool:
        """Whether the server is up."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def sessions(self) -> int:
        """How many sessions' proxies are attached."""
        return len(self._routes)

    def start(self, timeout: float = 15.0) -> None:
        """Start mitmproxy on its own thread.

        Raises:
            SandboxError: Another server runs in this process, or this one did
                not come up.
        """
        if self.running:
            return
        global _active
        with _active_lock:
            if _active is not None and _active is not self and _active.running:
                raise SandboxError(
                    "the egress proxy did not start: another egress server is running in "
                    "this process (mitmproxy keeps one master per process)"
                )
            _active = self
        self._dir = Path(tempfile.mkdtemp(prefix="keyless-egress-"))
        os.chmod(self._dir, 0o700)
        # mitmproxy's stock DH parameters (public); it loads them from a file.
        dhparam = self._dir / "dhparam.pem"
        dhparam.write_bytes(certs.DEFAULT_DHPARAM)
        self._dhparams = certs.CertStore.load_dhparam(dhparam)
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
                self._instance = next(iter(server.servers), None)
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
        master = Master(Options(), event_loop=loop)
        # The few addons a proxy needs; options exist once their addons are in.
        master.addons.add(  # type: ignore[no-untyped-call]
            core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(),  # type: ignore[no-untyped-call]
            _RoutingTls(self), _Addon(self),
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
        """Stop mitmproxy and remove the server's directory; attached proxies stop working."""
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

    def _attach(self, route: EgressProxy) -> None:
        self._routes.add(route)

    def _detach(self, route: EgressProxy) -> None:
        self._routes.discard(route)
        for port, (owner, _) in list(self._peers.items()):
            if owner is route:
                self._peers.pop(port, None)

    def _route_of(self, client: Client, flow: http.HTTPFlow | None = None) -> EgressProxy | None:
        entry = self._clients.get(client.id)
        if entry is None and flow is not None:
            return flow.metadata.get("keyless_route")
        return entry[0] if entry is not None and entry[0] in self._routes else None

    def _label(self, client: Client) -> str:
        entry = self._clients.get(client.id)
        return entry[1] if entry is not None else "?"

    async def _accept(
        self,
        route: EgressProxy,
        label: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Hand one sandbox connection (its Unix socket) to mitmproxy, no TCP hop between.

        ``ServerInstance.handle_stream`` is what mitmproxy's own listener calls
        for each accepted connection; pinned to mitmproxy 11.0.2.
        """
        instance = self._instance
        if instance is None:
            writer.close()
            return
        self._accepted += 1
        # A number no TCP peer can have, so no local process can pass for this sandbox.
        port = _UNIX_PEERS + self._accepted
        self._peers[port] = (route, label)  # before mitmproxy sees the connection
        try:
            await instance.handle_stream(reader, _UnixPeer(writer, port, self._port))
        finally:
            self._peers.pop(port, None)

    def _on_connected(self, data: ServerConnectionHookData) -> None:
        name = self._named.pop(data.server.id, None)
        if name is not None:
            # mitmproxy refuses a new address on an open connection (a guard for
            # addons that would redirect it); this one only gets its name back,
            # and the peer stays in ``peername``. Pinned to mitmproxy 11.0.2.
            object.__setattr__(data.server, "address", name)


#: How long a session reuses a host's resolved addresses (they are checked at each use).
RESOLVED_TTL = 30.0
#: How many hosts' addresses a session keeps.
_RESOLVED_MAX = 256


class _ResolvedNames:
    """A session's recent name resolutions, so a new connection skips the resolver.

    Only resolution is cached: the address check runs on every connection,
    and a host is resolved only once the rules allowed a request to it.
    Touched only on the proxy's loop.
    """

    def __init__(self, ttl: float | None = None) -> None:
        self.ttl = ttl
        self._entries: OrderedDict[tuple[str, int], tuple[float, list[Any]]] = OrderedDict()

    def get(self, key: tuple[str, int], now: float) -> list[Any] | None:
        entry = self._entries.get(key)
        if entry is None or now >= entry[0]:
            return None
        return entry[1]

    def put(self, key: tuple[str, int], addresses: list[Any], now: float) -> None:
        ttl = RESOLVED_TTL if self.ttl is None else self.ttl
        self._entries[key] = (now + ttl, addresses)
        self._entries.move_to_end(key)
        while len(self._entries) > _RESOLVED_MAX:
            self._entries.popitem(last=False)


#: Sandbox connections get peer "ports" from here on: above any TCP port.
_UNIX_PEERS = 1 << 20
#: How far a sandbox's Unix socket reads ahead.
_UNIX_READ = 1 << 18


class _UnixPeer:
    """A sandbox's Unix-socket writer, as mitmproxy's TCP clients look (a numbered peer).

    mitmproxy reads a client's ``peername`` and ``sockname`` from its writer
    and formats them as addresses; everything else goes to the real writer.
    """

    def __init__(self, writer: asyncio.StreamWriter, port: int, local_port: int) -> None:
        self._writer = writer
        self._names = {"peername": ("127.0.0.1", port), "sockname": ("127.0.0.1", local_port)}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The numbered peer for ``peername``/``sockname``; the real writer's otherwise."""
        if name in self._names:
            return self._names[name]
        return self._writer.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


def _attach_shared(route: EgressProxy, upstream_ca: Path | None) -> EgressServer:
    """Attach ``route`` to the process's shared server, starting it first if needed.

    Raises:
        SandboxError: The running server verifies upstream servers with
            another CA while other sessions use it, or it did not start.
    """
    global _shared
    with _active_lock:
        shared = _shared
    if shared is not None and shared.running:
        if shared.upstream_ca == upstream_ca:
            shared._attach(route)
            return shared
        if shared.sessions:
            raise SandboxError(
                "the egress proxy did not start: the shared egress server verifies upstream "
                "servers with another CA while other sessions use it"
            )
        shared.close()
    shared = EgressServer(upstream_ca)
    shared.start()
    shared._attach(route)
    with _active_lock:
        _shared = shared
    return shared


_shared_start_lock = threading.Lock()


def stop_shared_server() -> None:
    """Stop the process's shared egress server, if one runs (the app calls this at exit)."""
    global _shared
    with _shared_start_lock:
        with _active_lock:
            shared, _shared = _shared, None
        if shared is not None:
            shared.close()


class EgressProxy:
    """The egress proxy of one session: its rules, broker and CA on the shared server.

    Several sessions (the app's errands, ``keyless run``) use the process's
    one :class:`EgressServer` at once; each connection is routed to the
    session whose command opened it, so a handle is only ever redeemed
    against its own session's grants.

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
        server: The server to attach to; None: the process's shared one,
            started on first use.
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
        server: EgressServer | None = None,
    ) -> None:
        self.hooks = hooks
        self.broker = broker
        self.session_id = session_id
        self.pinned_hosts = frozenset(h.lower().rstrip(".") for h in pinned_hosts)
        self.local_hosts = frozenset(h.lower().rstrip(".") for h in local_hosts)
        self.upstream_ca = upstream_ca
        self._resolver = resolver
        self._given_server = server
        self._server: EgressServer | None = None
        self._dir: Path | None = None
        self._ca: SessionCA | None = None
        self._certstore: certs.CertStore | None = None
        self._count = 0
        self._redactor: Any = None
        self._audits: set[asyncio.Future[None]] = set()
        self._resolved = _ResolvedNames()

    # ------------------------------------------------------------------ lifetime

    @property
    def running(self) -> bool:
        """Whether this session's proxy is attached to a running server."""
        return self._server is not None and self._server.running and self._certstore is not None

    @property
    def _port(self) -> int:
        return self._server._port if self._server is not None else 0

    def start(self, timeout: float = 15.0) -> None:
        """Mint the session CA and attach to the server (started first if it is not).

        Raises:
            SandboxError: The server did not come up.
        """
        if self.running:
            return
        self._ca = mint_ca()
        self._dir = Path(tempfile.mkdtemp(prefix="keyless-egress-session-"))
        os.chmod(self._dir, 0o700)
        bundle = self._dir / "ca-bundle.pem"
        bundle.write_bytes(_system_bundle() + b"\n" + self._ca.cert_pem)
        shutil.copyfile(FORWARDER_SOURCE, self._dir / "forwarder.py")
        shutil.copyfile(ASKPASS_SOURCE, self._dir / "askpass")
        os.chmod(self._dir / "askpass", 0o755)
        try:
            if self._given_server is not None:
                self._given_server.start(timeout)
                self._given_server._attach(self)
                server = self._given_server
            else:
                with _shared_start_lock:
                    server = _attach_shared(self, self.upstream_ca)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            raise
        # mitmproxy 11's annotations say RSA; it signs with any key cryptography does.
        self._certstore = certs.CertStore(
            self._ca.key,  # type: ignore[arg-type]  # an EC key (see ca.py)
            certs.Cert(self._ca.cert), None, server._dhparams,
        )
        self._server = server

    def close(self) -> None:
        """Detach from the server and remove this session's directory (sockets, CA bundle).

        The shared server keeps running for the other sessions (and the next
        one); :func:`stop_shared_server` stops it.
        """
        server, self._server = self._server, None
        if server is not None:
            server._detach(self)
        self._certstore = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # ------------------------------------------------------------------ channels

    @contextlib.contextmanager
    def channel(self, command: str) -> Iterator[EgressChannel]:
        """A Unix socket for one command, and the environment that points programs at it.

        Raises:
            SandboxError: The proxy is not running.
        """
        server = self._server
        if not self.running or server is None or server._loop is None or self._dir is None:
            raise SandboxError("the egress proxy is not running")
        self._count += 1
        path = self._dir / f"egress-{self._count}.sock"
        label = command
        server_loop = server._loop
        unix = asyncio.run_coroutine_threadsafe(
            asyncio.start_unix_server(
                lambda r, w: server._accept(self, label, r, w), path=str(path), limit=_UNIX_READ
            ),
            server_loop,
        ).result(10)
        try:
            yield EgressChannel(path, self._dir / "ca-bundle.pem", proxy_env(), label)
        finally:
            # The command is done: its requests' audit entries are written before it returns.
            with contextlib.suppress(RuntimeError, TimeoutError, concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(self._drain_audits(), server_loop).result(10)
            with contextlib.suppress(RuntimeError):
                server_loop.call_soon_threadsafe(unix.close)
            with contextlib.suppress(OSError):
                path.unlink()

    @property
    def forwarder(self) -> Path:
        """The forwarder script the sandbox runs (a copy in the session's directory)."""
        if self._dir is None:
            raise SandboxError("the egress proxy is not running")
        return self._dir / "forwarder.py"

    def _label(self, client: Client) -> str:
        return self._server._label(client) if self._server is not None else "?"

    async def _on_clienthello(self, data: ClientHelloData) -> None:
        address = data.context.server.address or ("", 443)
        host = (data.client_hello.sni or address[0] or "").lower()
        if host not in self.pinned_hosts:
            return
        request = EgressRequest(
            command=self._label(data.context.client),
            scheme="https",
            host=host,
            port=address[1],
            method="CONNECT",
            path="",
        )
        verdict = await asyncio.to_thread(self._decide, request)
        if verdict.allowed:
            data.ignore_connection = True  # a tunnel: the bytes go through untouched
        else:
            data.context.client.error = verdict.reason

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
        flow.metadata["keyless_route"] = self
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
            cached = self._resolved.get((host, port), time.monotonic())
            if cached is not None:
                addresses = cached
            else:
                addresses = await asyncio.to_thread(resolve, host, port, resolver)
                self._resolved.put((host, port), addresses, time.monotonic())
            check_addresses(host, addresses, allow_local=host in self.local_hosts)
        except GrantRefused as e:
            data.server.error = f"refused: {e.reason}"
            return
        # Connect to the address checked, never to a second DNS answer; the name
        # comes back once connected (:meth:`_on_connected`), or mitmproxy would
        # never reuse the connection (it matches by address) and would stall a
        # kept-alive client at its per-address limit of 5 open connections.
        if self._server is not None:
            self._server._named[data.server.id] = (host, port)
        data.server.address = (str(addresses[0]), port)

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
        # mitmproxy holds the response's last chunk until this hook returns, and
        # the body is already out: so the entry is written beside the client's
        # next request, not before it, and the command's channel waits for it.
        audit = asyncio.ensure_future(asyncio.to_thread(
            self.hooks.record,
            "egress_request" if reason is None else "egress_failed",
            tool="shell",
            decision="allow",
            reason=reason,
            details=details,
        ))
        self._audits.add(audit)
        audit.add_done_callback(self._audited)

    def _audited(self, audit: asyncio.Future[None]) -> None:
        self._audits.discard(audit)
        if not audit.cancelled() and audit.exception() is not None:
            log.warning("egress audit entry failed: %s", type(audit.exception()).__name__)

    async def _drain_audits(self) -> None:
        await asyncio.gather(*list(self._audits), return_exceptions=True)

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
