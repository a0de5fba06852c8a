"""The egress proxy's cost: proxied vs direct requests, a 100 MB download, sandbox start.

Run: ``.venv/bin/python -m bench egress [--runs N] [--mb M]``.

Everything is on loopback: a local HTTPS server (a trustme CA) stands for the
internet; the proxy is built as the host builds it, with a vault open (so
every response streams through the broker's redactor) and a rule that allows
``localhost``. The bench talks to the proxy as the in-sandbox forwarder does:
through the command's Unix socket, ``CONNECT``, then TLS with the session CA.
Variants run interleaved (one of each per round). Side by side in the same
run: a session whose redactor has its one-pass prefilter off and which
resolves on every connection (the path before them), and the stream
redactor alone with and without the prefilter. The download also goes
through the real in-sandbox forwarder (the hop the other proxied rows skip),
and through two TLS relays that inspect nothing (socat, native; and a
standard-library ``ssl`` relay): the ceiling any intercepting proxy meets on
this machine. Downloads run in interleaved rounds; each row is the median of
its rounds. Goals: proxied request overhead < 5 ms at p50; 100 MB throughput
proxied ≥ 0.5x direct.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import random
import select
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme  # noqa: E402
from mitmproxy.connection import Client  # noqa: E402
from mitmproxy.http import HTTPFlow  # noqa: E402
from mitmproxy.proxy.server_hooks import ServerConnectionHookData  # noqa: E402

from agent.host.egress.proxy import (  # noqa: E402
    FORWARDER_SOURCE,
    EgressProxy,
    EgressRequest,
    EgressVerdict,
    _ResolvedNames,
    stop_shared_server,
)
from agent.host.sandbox import Limits, Sandbox  # noqa: E402
from vault.audit import AuditLog  # noqa: E402
from vault.broker import Broker  # noqa: E402
from vault.grants import GrantStore  # noqa: E402
from vault.keystore import NoKeyring  # noqa: E402
from vault.store import Argon2Params, Vault  # noqa: E402

CHUNK = 1 << 20


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in separate writes: with Nagle on, each
    # small response waited ~40 ms for the client's delayed ACK, direct and
    # proxied alike, and that wait (and its scatter) hid the proxy's cost.
    disable_nagle_algorithm = True
    big_bytes = 0
    block = b"x" * CHUNK

    def log_message(self, *args: Any) -> None:
        return

    def do_GET(self) -> None:  # noqa: D102 (http.server's contract)
        size = self.big_bytes if self.path.startswith("/big") else 64
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = self.block if size > 64 else b"x" * 64
        left = size
        while left > 0:
            self.wfile.write(block[: min(left, CHUNK)])
            left -= CHUNK


@dataclass
class LoopbackSite:
    """The bench's stand-in for the internet: an HTTPS server in a process of its own.

    ``https://localhost:{port}/small`` answers 64 bytes, ``/big`` the
    download; its certificate comes from a trustme CA written to ``ca_file``.
    """

    process: Any
    port: int
    ca_file: Path
    cert_file: Path
    ports: Any
    """The queue the server put its port on (other processes may use it for theirs)."""

    @classmethod
    def start(cls, tmp: Path, spawn: Any, big_bytes: int, body: str) -> LoopbackSite:
        """Mint the CA and the leaf under ``tmp`` and start the server (a ``spawn`` process)."""
        ca = trustme.CA()
        ca_file = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        cert_file = tmp / "localhost.pem"
        ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(cert_file)
        )
        ports = spawn.Queue()
        process = spawn.Process(target=_upstream_main,
                                args=(str(cert_file), big_bytes, body, ports), daemon=True)
        process.start()
        return cls(process, int(ports.get(timeout=60)), ca_file, cert_file, ports)


def bench_broker(db: Path) -> Broker:
    """A broker over a fresh vault (fast KDF) holding ``API_TOKEN``; resolves to loopback."""
    vault = Vault.create(db.with_name("vault.kls"), passphrase="bench", use_keyring=False,
                         keystore=NoKeyring(), idle_timeout=None,
                         kdf=Argon2Params(iterations=1, lanes=1, memory_kib=64))
    vault.add("API_TOKEN", b"sk-bench-0123456789abcdef")
    return Broker(vault, GrantStore(db), AuditLog(db), resolver=lambda h, p: ["127.0.0.1"])


class _AllowAll:
    def decide(self, request: EgressRequest) -> EgressVerdict:
        return EgressVerdict(True, "bench")

    def record(self, kind: str, **fields: Any) -> None:
        return None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _tunnel(sock_path: Path | int, port: int, ctx: ssl.SSLContext) -> http.client.HTTPSConnection:
    """An HTTPS connection through the proxy, opened as the forwarder's clients open theirs.

    ``sock_path`` is the command's Unix socket, or the loopback port of a
    forwarder in front of it (as a sandboxed program reaches it).
    """
    if isinstance(sock_path, int):
        raw = socket.create_connection(("127.0.0.1", sock_path))
    else:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(str(sock_path))
    raw.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = raw.recv(4096)
        if not data:
            raise RuntimeError("the proxy closed the tunnel")
        head += data
    if b" 200" not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"CONNECT refused: {head[:80]!r}")
    conn = http.client.HTTPSConnection("localhost", port, context=ctx)
    conn.sock = ctx.wrap_socket(raw, server_hostname="localhost")
    return conn


def _get(conn: http.client.HTTPSConnection, path: str) -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    total = 0
    while data := response.read(CHUNK):
        total += len(data)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="requests per variant")
    parser.add_argument("--mb", type=int, default=100, help="size of the download")
    parser.add_argument("--starts", type=int, default=30, help="sandbox starts per variant")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved download rounds (each row: the median)")
    parser.add_argument(
        "--body", choices=("random", "x"), default="random",
        help="the download's bytes: random (a compressed archive's) or one repeated 'x' "
        "(which str.find scans slowly: 'x' shares its bloom-filter bit with '8')",
    )
    parser.add_argument("--phases", type=int, default=0, metavar="N",
                        help="also time N new connections hook by hook (where a new one's ms go)")
    args = parser.parse_args(argv)
    # The upstream server and the clients run in processes of their own, as
    # the internet and the sandboxed command do: in this one they would share
    # the proxy thread's GIL and slow it down (and it them).
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp_name, spawn.Pool(1) as clients:
        tmp = Path(tmp_name)
        site = LoopbackSite.start(tmp, spawn, args.mb * CHUNK, args.body)
        upstream, port, ca_file = site.process, site.port, site.ca_file
        relay = spawn.Process(target=_tls_relay_main,
                              args=(str(site.cert_file), str(ca_file), port, site.ports),
                              daemon=True)
        relay.start()
        relay_port = int(site.ports.get(timeout=60))
        native = _native_relay(site.cert_file, ca_file, port)
        broker = bench_broker(tmp / "k.db")
        proxy = EgressProxy(_AllowAll(), broker, session_id="bench", local_hosts=["localhost"],
                            upstream_ca=ca_file, resolver=lambda h, p: ["127.0.0.1"])
        started = time.perf_counter()
        proxy.start()  # the first session starts the process's shared server
        proxy_start_ms = (time.perf_counter() - started) * 1000
        # A second session on the same server (no vault: nothing to redact).
        plain = EgressProxy(_AllowAll(), None, session_id="bench-plain",
                            local_hosts=["localhost"], upstream_ca=ca_file,
                            resolver=lambda h, p: ["127.0.0.1"])
        started = time.perf_counter()
        plain.start()
        attach_ms = (time.perf_counter() - started) * 1000
        # A third session redacting as before the one-pass prefilter: every
        # chunk through the full search (the same redactor, prefilter off).
        before = EgressProxy(_AllowAll(), _FullSearchBroker(broker), session_id="bench",
                             local_hosts=["localhost"], upstream_ca=ca_file,
                             resolver=lambda h, p: ["127.0.0.1"])
        before._resolved = _ResolvedNames(ttl=0.0)  # and resolving on every connection
        before.start()
        try:
            with (proxy.channel("bench") as channel, plain.channel("bench") as bare,
                  before.channel("bench") as full,
                  _forwarder(channel.socket_path) as forwarded):
                clients.apply(_requests, (args.runs, port, str(channel.socket_path),
                                          str(ca_file), str(channel.ca_bundle),
                                          str(full.socket_path), str(full.ca_bundle)))
                ceilings: list[tuple[str, Any, str]] = [
                    ("TLS relay inspecting nothing, Python ssl (a thread per connection)",
                     -relay_port, str(ca_file)),
                ]
                if native is not None:
                    ceilings.insert(0, ("TLS relay inspecting nothing, native (socat)",
                                        -native[1], str(ca_file)))
                rows, busy = clients.apply(_download, (args.mb, port, str(ca_file), args.rounds, [
                    *ceilings,
                    ("proxied, vault open (redacted stream)", str(channel.socket_path),
                     str(channel.ca_bundle)),
                    ("proxied, vault open, through the in-sandbox forwarder", forwarded,
                     str(channel.ca_bundle)),
                    ("proxied, vault open, prefilter off (full search)", str(full.socket_path),
                     str(full.ca_bundle)),
                    ("proxied, no vault (nothing to redact)", str(bare.socket_path),
                     str(bare.ca_bundle)),
                ], upstream.pid))
                if args.phases:
                    _phases(args.phases, proxy, channel, port, clients)
            _starts(args.starts, tmp, proxy)
            redactor_rows = _redactor_alone(broker, args.mb, args.body)
        finally:
            proxy.close()
            plain.close()
            before.close()
            stop_shared_server()
            broker.close()
            if native is not None:
                native[0].terminate()
                native[0].wait(10)
            relay.terminate()
            upstream.terminate()
            relay.join(10)
            upstream.join(10)
    print(f"\n{args.mb} MB download ({args.body} bytes) over loopback HTTPS, "
          f"{args.rounds} interleaved rounds, medians\n")
    if native is None:
        print("(socat not installed: the native relay's row is missing)\n")
    print("| variant | seconds | MB/s | vs direct | each round vs direct |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, rate, each in rows:
        print(f"| {name} | {seconds:.2f} | {rate:.0f} | {rate / rows[0][2]:.2f}x | "
              + ", ".join(f"{r:.2f}x" for r in each) + " |")
    print(f"\n{busy}")
    print(f"\nthe redactor alone: {min(args.mb, 64)} MB ({args.body} bytes as latin-1 text) "
          f"in {REDACT_CHUNK // 1024} KiB chunks, in this process\n")
    print("| variant | seconds | MB/s | vs the prefilter |")
    print("|---|---:|---:|---:|")
    for name, seconds, rate in redactor_rows:
        print(f"| {name} | {seconds:.3f} | {rate:.0f} | {rate / redactor_rows[1][2]:.2f}x |")
    print(f"\nfirst session's proxy start (shared server up, CA minted): {proxy_start_ms:.0f} ms"
          f"\nnext session's proxy start (CA minted, server running): {attach_ms:.0f} ms")
    return 0


class _FullSearchBroker:
    """The bench's broker, handing redactors that skip the one-pass prefilter (as before it)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def redeem_egress(self, handle: str, **kwargs: Any) -> Any:
        return self._broker.redeem_egress(handle, **kwargs)

    def egress_redactor(self, session_id: str) -> Any:
        redactor = self._broker.egress_redactor(session_id)
        redactor._latin_min = sys.maxsize
        return redactor


REDACT_CHUNK = 1 << 16
"""What mitmproxy hands the stream: one read of the upstream socket."""


def _redactor_alone(broker: Broker, mb: int, body: str) -> list[tuple[str, float, float]]:
    """Stream ``mb`` MB through the session's redactor: a copy, with the prefilter, without."""
    block = (random.Random(0).randbytes(CHUNK) if body == "random" else b"x" * CHUNK)
    size = min(mb, 64) * CHUNK  # the full search alone takes seconds per 100 MB
    text = (block * (size // CHUNK)).decode("latin-1")
    rows = []

    def copy(piece: str) -> str:
        return piece.encode("latin-1").decode("latin-1")

    fast = broker.egress_redactor("bench").stream()
    slow_redactor = broker.egress_redactor("bench")
    slow_redactor._latin_min = sys.maxsize
    slow = slow_redactor.stream()
    for name, feed in (("a copy (decode, encode)", copy),
                       ("stream redactor, one-pass prefilter", fast.feed),
                       ("stream redactor, prefilter off (full search)", slow.feed)):
        start = time.perf_counter()
        for at in range(0, len(text), REDACT_CHUNK):
            feed(text[at : at + REDACT_CHUNK])
        seconds = time.perf_counter() - start
        rows.append((name, seconds, size / CHUNK / seconds))
    return rows


def _upstream_main(cert_file: str, big_bytes: int, body: str, ports: Any) -> None:
    """The upstream HTTPS server, in a process of its own; puts its port on ``ports``."""
    _Upstream.big_bytes = big_bytes
    if body == "random":
        _Upstream.block = random.Random(0).randbytes(CHUNK)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    ports.put(httpd.server_address[1])
    httpd.serve_forever()


def _requests(runs: int, port: int, sock_name: str, direct_ca: str, proxied_ca: str,
              uncached_sock: str, uncached_ca: str) -> None:
    """Time the request variants (in the client process) and print their table."""
    sock = Path(sock_name)
    direct = ssl.create_default_context(cafile=direct_ca)
    proxied = ssl.create_default_context(cafile=proxied_ca)
    uncached = ssl.create_default_context(cafile=uncached_ca)
    keep_direct = http.client.HTTPSConnection("localhost", port, context=direct)
    keep_proxy = _tunnel(sock, port, proxied)

    def fresh_direct() -> int:
        conn = http.client.HTTPSConnection("localhost", port, context=direct)
        try:
            return _get(conn, "/small")
        finally:
            conn.close()

    def fresh_proxy() -> int:
        conn = _tunnel(sock, port, proxied)
        try:
            return _get(conn, "/small")
        finally:
            conn.close()

    def fresh_uncached() -> int:
        conn = _tunnel(Path(uncached_sock), port, uncached)
        try:
            return _get(conn, "/small")
        finally:
            conn.close()

    variants: dict[str, Callable[[], int]] = {
        "direct, kept-alive connection": lambda: _get(keep_direct, "/small"),
        "proxied, kept-alive connection": lambda: _get(keep_proxy, "/small"),
        "direct, new TLS connection": fresh_direct,
        "proxied, new CONNECT + TLS": fresh_proxy,
        "proxied, new CONNECT + TLS, resolving every time": fresh_uncached,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up: the session CA's leaf for localhost, imports
    for _ in range(runs):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    keep_direct.close()
    keep_proxy.close()
    print(f"GET of 64 bytes over loopback HTTPS, {runs} interleaved requests each\n")
    print("| variant | p50 ms | p95 ms | + ms vs direct (p50) |")
    print("|---|---:|---:|---:|")
    sys.stdout.flush()
    for name, values in samples.items():
        base = samples["direct, " + name.split(", ", 1)[1]] if name.startswith("direct") else (
            samples["direct, kept-alive connection"] if "kept" in name
            else samples["direct, new TLS connection"])
        p50 = statistics.median(values)
        print(f"| {name} | {p50:.2f} | {_pct(values, 0.95):.2f} | "
              f"{p50 - statistics.median(base):+.2f} |")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _download(mb: int, port: int, direct_ca: str, rounds: int,
              others: list[tuple[str, Any, str]],
              upstream_pid: int) -> tuple[list[tuple[str, float, float, list[float]]], str]:
    """Time the download direct and through each of ``others``, in interleaved rounds.

    Each of ``others`` is a name, where to connect and the CA to trust: a Unix
    socket path or a forwarder's port (``CONNECT`` through the proxy), or a
    negative port (a TLS relay: connect to it as if it were the server).
    Returns, per variant, the median seconds and MB/s and each round's ratio
    to that round's direct download; and a line saying how busy the upstream
    server and this client were during the direct downloads (how much of
    the two cores the direct path already takes).
    """
    direct = ssl.create_default_context(cafile=direct_ca)
    makers: list[tuple[str, Callable[[], http.client.HTTPSConnection]]] = [
        ("direct", lambda: http.client.HTTPSConnection("localhost", port, context=direct))
    ]
    for name, where, ca in others:
        ctx = ssl.create_default_context(cafile=ca)
        if isinstance(where, int) and where < 0:
            makers.append((name, lambda where=where, ctx=ctx: http.client.HTTPSConnection(  # type: ignore[misc]
                "localhost", -where, context=ctx)))
        else:
            target = where if isinstance(where, int) else Path(where)
            makers.append((name, lambda target=target, ctx=ctx: _tunnel(target, port, ctx)))  # type: ignore[misc]
    seconds: dict[str, list[float]] = {name: [] for name, _ in makers}
    busy: list[tuple[float, float]] = []  # server, client: CPU seconds per wall second
    for _ in range(rounds):
        for name, make in makers:
            conn = make()
            server_cpu, client_cpu = _cpu_seconds(upstream_pid), time.process_time()
            start = time.perf_counter()
            got = _get(conn, "/big")
            wall = time.perf_counter() - start
            seconds[name].append(wall)
            if name == "direct":
                busy.append(((_cpu_seconds(upstream_pid) - server_cpu) / wall,
                             (time.process_time() - client_cpu) / wall))
            conn.close()
            if got != mb * CHUNK:
                raise RuntimeError(f"{name}: got {got} bytes, expected {mb * CHUNK}")
    rows = []
    for name, values in seconds.items():
        median = statistics.median(values)
        each = [d / s for s, d in zip(values, seconds["direct"], strict=True)]
        rows.append((name, median, mb / median, each))
    server, client = (statistics.median(b[i] for b in busy) for i in (0, 1))
    return rows, (f"direct download: the upstream server busy {server:.0%} of a core, the client "
                  f"{client:.0%} (medians; CPU time at the clock tick's resolution)")


class _HookClock:
    """A mitmproxy addon noting when each hook first runs for each client connection.

    Added last, so each mark falls after Keyless's own addon handled the hook.
    """

    HOOKS = (
        "client_connected", "http_connect", "tls_clienthello", "tls_start_client",
        "tls_established_client", "requestheaders", "server_connect", "server_connected",
        "tls_start_server", "tls_established_server", "responseheaders", "response",
        "client_disconnected",
    )

    def __init__(self) -> None:
        self.marks: dict[str, dict[str, float]] = {}
        for hook in self.HOOKS:
            setattr(self, hook, lambda data, hook=hook: self._mark(hook, data))

    def _mark(self, hook: str, data: Any) -> None:
        if isinstance(data, Client):  # client_connected, client_disconnected
            client = data
        elif isinstance(data, HTTPFlow):
            client = data.client_conn
        elif isinstance(data, ServerConnectionHookData):
            client = data.client
        else:  # the TLS hooks' data
            client = data.context.client
        self.marks.setdefault(client.id, {}).setdefault(hook, time.perf_counter())


def _phases(runs: int, proxy: EgressProxy, channel: Any, port: int, clients: Any) -> None:
    """Time ``runs`` new connections of the vault-open session, hook to hook, and print it."""
    server = proxy._server
    assert server is not None and server._loop is not None and server._master is not None
    clock = _HookClock()
    loop, addons = server._loop, server._master.addons
    asyncio.run_coroutine_threadsafe(_call(addons.add, clock), loop).result(10)
    try:
        total = clients.apply(_new_connections, (runs, port, str(channel.socket_path),
                                                 str(channel.ca_bundle)))
    finally:
        asyncio.run_coroutine_threadsafe(_call(addons.remove, clock), loop).result(10)
    complete = [m for m in clock.marks.values() if len(m) == len(_HookClock.HOOKS)]
    print(f"\n{len(complete)} new connections (CONNECT + TLS + GET of 64 bytes), vault open, "
          f"hook by hook in the proxy (medians); the client saw {total:.2f} ms each\n")
    print("| from | to | ms |")
    print("|---|---|---:|")
    for first, then in zip(_HookClock.HOOKS, _HookClock.HOOKS[1:], strict=False):
        gaps = [(m[then] - m[first]) * 1000 for m in complete]
        print(f"| {first} | {then} | {statistics.median(gaps):.3f} |")


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


def _new_connections(runs: int, port: int, sock_name: str, ca: str) -> float:
    """Open ``runs`` new tunnels one after the other, a GET on each; the median ms (client)."""
    ctx = ssl.create_default_context(cafile=ca)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        conn = _tunnel(Path(sock_name), port, ctx)
        _get(conn, "/small")
        conn.close()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


class _forwarder:  # noqa: N801 (used as a context manager, like a function)
    """The in-sandbox forwarder, run as a sandbox runs it, in front of ``socket_path``.

    Entered, it is the forwarder's loopback port; the forwarder's command is a
    ``sleep`` that ends when the context does.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> int:
        port = _free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", str(FORWARDER_SOURCE), str(port), str(self.socket_path),
             "--", "sleep", "3600"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        )
        _wait_listening(port, self.process, "the forwarder")
        return port

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the forwarder and its sleep
            self.process.wait(10)


def _native_relay(cert_file: Path, ca_file: Path,
                  port: int) -> tuple[subprocess.Popen[bytes], int] | None:
    """socat terminating TLS with ``cert_file`` and re-encrypting to ``port``, or None.

    A native TLS relay that inspects nothing: what an intercepting proxy costs
    at the least (a decrypt and an encrypt per byte, two more socket copies).
    """
    if shutil.which("socat") is None:
        return None
    listen = _free_port()
    process = subprocess.Popen(
        ["socat", "-b", str(1 << 18),
         f"OPENSSL-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork,cert={cert_file},verify=0",
         f"OPENSSL:127.0.0.1:{port},cafile={ca_file},commonname=localhost,snihost=localhost"],
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(listen, process, "socat")
    return process, listen


def _free_port() -> int:
    """A loopback TCP port nothing listens on now (for a program told which port to take)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    """Wait until ``process`` accepts connections on ``port``; kill it if it never does."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"{what} did not start listening on port {port}")


def _tls_relay_main(cert_file: str, ca_file: str, port: int, ports: Any) -> None:
    """A TLS relay in the standard library's ``ssl`` that inspects nothing; its port to ``ports``.

    One thread per connection moves both directions with non-blocking
    sockets (an ``SSLSocket`` must not be read and written from two threads
    at once: OpenSSL's ``SSL`` object is not thread-safe); the per-byte work
    (OpenSSL, the kernel) runs without the GIL. The least a proxy written in
    Python could cost.
    """
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file)
    client_ctx = ssl.create_default_context(cafile=ca_file)
    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    while True:
        raw, _ = listener.accept()
        try:
            client = server_ctx.wrap_socket(raw, server_side=True)
            upstream = client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                              server_hostname="localhost")
        except OSError:
            raw.close()
            continue
        threading.Thread(target=_relay_both, args=(client, upstream), daemon=True).start()


def _relay_both(a: ssl.SSLSocket, b: ssl.SSLSocket) -> None:
    """Copy ``a`` to ``b`` and ``b`` to ``a`` until either ends, in this one thread."""
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    selector = selectors.DefaultSelector()
    for sock, peer in ((a, b), (b, a)):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, peer)

    def send(dst: ssl.SSLSocket, data: memoryview) -> None:
        while data:
            try:
                data = data[dst.send(data):]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                select.select([], [dst], [], 10)

    try:
        while True:
            for key, _ in selector.select():
                src, dst = key.fileobj, key.data
                assert isinstance(src, ssl.SSLSocket)
                while True:  # everything OpenSSL holds decrypted, not just one record
                    try:
                        n = src.recv_into(buf)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        break
                    if n == 0:
                        return
                    send(dst, view[:n])
    except OSError:
        return
    finally:
        selector.close()
        a.close()
        b.close()


def _starts(runs: int, tmp: Path, proxy: EgressProxy) -> None:
    sandbox = Sandbox.detect()
    if not sandbox.available:
        print("\nbubblewrap unavailable: sandbox start not measured")
        return
    ws = tmp / "ws"
    ws.mkdir()
    limits = Limits()
    variants: dict[str, Callable[[], object]] = {
        "sandbox, no network": lambda: sandbox.run_shell("true", ws, limits),
        "sandbox with the egress proxy": lambda: sandbox.run_shell("true", ws, limits,
                                                                   egress=proxy),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(runs):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(samples["sandbox, no network"])
    print(f"\nshell `true` in its sandbox, {runs} interleaved runs each\n")
    print("| variant | p50 ms | p95 ms | + ms (p50) |")
    print("|---|---:|---:|---:|")
    for name, values in samples.items():
        p50 = statistics.median(values)
        print(f"| {name} | {p50:.1f} | {_pct(values, 0.95):.1f} | {p50 - base:+.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
