"""Tool round trip on the host: a tool of an MCP server (sandboxed stdio) vs the built-in read_file.

Run: ``.venv/bin/python -m bench.bench_mcp [--runs N] [--network]``.

Each call goes the whole host path a model's call takes: argument check, the
policy (an allow rule), the tool, and the delivery (redaction, credential
scan, truncation, taint, audit entries in a real ``keyless.db``). The MCP
server is ``tests/agent/mcp_servers/files_server.py`` (FastMCP) in its own
bubblewrap sandbox; both tools read the same small file. Interleaved, one of
each per round. Also reported: the server's start (sandbox, Python, SDK,
initialize, list tools).

``--network`` measures instead an MCP server's HTTPS request through the
egress proxy: ``tests/agent/mcp_servers/api_server.py`` in its sandbox with a
``cap_`` handle in its environment calls a loopback HTTPS API (trustme CA, in
a process of its own) through the process's shared proxy, which swaps the
handle for the vault secret and redacts the response. Against: the same
server's tool without a request (the MCP hop alone), the same request from
a server given the host but no secret (no handle to redeem), and the same
HTTPS request sent directly from the bench's process (a new connection each, as
the server's ``urllib`` opens one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.host.errand import AgentHost  # noqa: E402
from agent.host.mcpserver.hub import McpHub  # noqa: E402
from agent.host.mcpserver.store import McpServerConfig, McpStore  # noqa: E402
from agent.host.policy import PolicyEngine, Rule  # noqa: E402
from agent.host.sandbox import Sandbox  # noqa: E402
from agent.protocol import ToolRequest  # noqa: E402
from vault.audit import AuditLog  # noqa: E402

SERVERS = Path(__file__).resolve().parents[1] / "tests" / "agent" / "mcp_servers"
SERVER = SERVERS / "files_server.py"
API_SERVER = SERVERS / "api_server.py"


class _NoPrompt:
    def ask(self, request: object) -> object:
        raise AssertionError("the bench's rules allow every call")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--network", action="store_true", help="through the egress proxy")
    args = parser.parse_args(argv)
    sandbox = Sandbox.detect()
    if not sandbox.available:
        print("bubblewrap is unavailable: MCP servers do not run without it")
        return 1
    if args.network:
        return _network(args.runs, sandbox)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = root / "ws"
        ws.mkdir()
        (ws / "notes.txt").write_text("buy milk\n" * 20, encoding="utf-8")
        store = McpStore(root / "keyless.db")
        store.add(McpServerConfig(name="files", command=sys.executable, args=[str(SERVER)]))
        hub = McpHub(store, sandbox, workspace=ws)
        start = time.perf_counter()
        hub.connect()
        started_ms = (time.perf_counter() - start) * 1000
        hub.approve("files")
        host = AgentHost(
            None,
            workspace=ws,
            broker=None,
            memory=None,
            policy=PolicyEngine(
                [
                    Rule.parse("mcp(files.*)", action="allow"),
                    Rule.parse("read_file", action="allow"),
                ]
            ),
            prompt=_NoPrompt(),  # type: ignore[arg-type]  # never asked
            audit=AuditLog(root / "keyless.db"),
            session_id="bench",
            tools=("read_file",),
            mcp=hub,
        )
        calls = {
            "built-in read_file": ToolRequest(
                call_id="b", tool="read_file", arguments={"path": "notes.txt"}
            ),
            "MCP files.read_text": ToolRequest(
                call_id="m", tool="files.read_text", arguments={"path": "notes.txt"}
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        try:
            for _ in range(5):  # warm-up
                for req in calls.values():
                    host._handle_tool(req)  # noqa: SLF001  # the host's own call path
            for _ in range(args.runs):
                for name, req in calls.items():
                    t0 = time.perf_counter()
                    result, _ = host._handle_tool(req)  # noqa: SLF001
                    times[name].append((time.perf_counter() - t0) * 1000)
                    assert result.ok, result.content
        finally:
            host.close()
    print(f"MCP server start (sandbox, initialize, list tools): {started_ms:.0f} ms")
    print(f"{'tool':<22}{'p50 ms':>9}{'p95 ms':>9}")
    for name, values in times.items():
        print(f"{name:<22}{_pct(values, 0.5):>9.2f}{_pct(values, 0.95):>9.2f}")
    return 0


def _network(runs: int, sandbox: Sandbox) -> int:
    import multiprocessing
    import ssl
    import urllib.request

    from agent.host.egress.proxy import stop_shared_server
    from agent.host.egress.settings import EgressSettings
    from agent.host.mcpserver.network import McpNetwork
    from agent.host.mcpserver.store import McpSecret
    from bench.bench_egress import LoopbackSite, bench_broker

    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        site = LoopbackSite.start(tmp, spawn, 0, "x")
        upstream, port, ca_file = site.process, site.port, site.ca_file
        db = tmp / "keyless.db"
        broker = bench_broker(db)
        store = McpStore(db)
        store.add(McpServerConfig(
            name="api", command=sys.executable, args=[str(API_SERVER)], hosts=["localhost"],
            allow_local=True,
            secrets=[McpSecret(env="API_TOKEN", secret="API_TOKEN", host="localhost", port=port)],
        ))  # fmt: skip
        # The same server with the host but no secret: no handle to redeem.
        store.add(McpServerConfig(
            name="plain", command=sys.executable, args=[str(API_SERVER)], hosts=["localhost"],
            allow_local=True,
        ))  # fmt: skip
        network = McpNetwork(
            policy=PolicyEngine([]), session_id="bench", broker=broker,
            egress=EgressSettings(upstream_ca=ca_file, resolver=lambda h, p: ["127.0.0.1"]),
        )  # fmt: skip
        ws = tmp / "ws"
        ws.mkdir()
        hub = McpHub(store, sandbox, workspace=ws, network=network)
        start = time.perf_counter()
        hub.connect()
        started_ms = (time.perf_counter() - start) * 1000
        hub.approve("api")
        hub.approve("plain")
        url = f"https://localhost:{port}/small"
        context = ssl.create_default_context(cafile=str(ca_file))

        def direct() -> None:
            with urllib.request.urlopen(url, context=context, timeout=20) as response:
                assert response.status == 200

        def mcp(tool: str, server: str = "api", **arguments: Any) -> Callable[[], None]:
            def run() -> None:
                output, ok = hub.call(f"{server}.{tool}", arguments)
                assert ok and "failed" not in output.content, output.content

            return run

        cases: dict[str, Callable[[], None]] = {
            "MCP api.token (no request)": mcp("token"),
            "MCP api.call_api via proxy": mcp("call_api", url=url),
            "same, no handle (plain)": mcp("call_api", "plain", url=url),
            "direct HTTPS request": direct,
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        try:
            for _ in range(5):
                for case in cases.values():
                    case()
            for _ in range(runs):
                for name, case in cases.items():
                    t0 = time.perf_counter()
                    case()
                    times[name].append((time.perf_counter() - t0) * 1000)
        finally:
            hub.close()
            stop_shared_server()
            broker.close()
            upstream.terminate()
            upstream.join(10)
    print(f"MCP server start with its proxy session and grant: {started_ms:.0f} ms")
    print(f"{'call':<30}{'p50 ms':>9}{'p95 ms':>9}")
    for name, values in times.items():
        print(f"{name:<30}{_pct(values, 0.5):>9.2f}{_pct(values, 0.95):>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
