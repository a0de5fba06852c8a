"""Tool round trip on the host: a tool of an MCP server (sandboxed stdio) vs the built-in read_file.

Run: ``.venv/bin/python -m bench.bench_mcp [--runs N]``.

Each call goes the whole host path a model's call takes: argument check, the
policy (an allow rule), the tool, and the delivery (redaction, credential
scan, truncation, taint, audit entries in a real ``keyless.db``). The MCP
server is ``tests/agent/mcp_servers/files_server.py`` (FastMCP) in its own
bubblewrap sandbox; both tools read the same small file. Interleaved, one of
each per round. Also reported: the server's start (sandbox, Python, SDK,
initialize, list tools).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.host.errand import AgentHost  # noqa: E402
from agent.host.mcpserver.hub import McpHub  # noqa: E402
from agent.host.mcpserver.store import McpServerConfig, McpStore  # noqa: E402
from agent.host.policy import PolicyEngine, Rule  # noqa: E402
from agent.host.sandbox import Sandbox  # noqa: E402
from agent.protocol import ToolRequest  # noqa: E402
from vault.audit import AuditLog  # noqa: E402

SERVER = Path(__file__).resolve().parents[1] / "tests" / "agent" / "mcp_servers" / "files_server.py"


class _NoPrompt:
    def ask(self, request: object) -> object:
        raise AssertionError("the bench's rules allow every call")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    sandbox = Sandbox.detect()
    if not sandbox.available:
        print("bubblewrap is unavailable: MCP servers do not run without it")
        return 1
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


if __name__ == "__main__":
    raise SystemExit(main())
