"""Agent pipe benchmarks, measured side by side in one run.

1. Tool round trip, timed inside the agent process: ToolRequest for
   ``read_file`` of a 100-byte file → host (decode, validate, policy allows,
   run the tool, redact, truncate, audit) → ToolResult decoded by the agent.
   Side by side: the same JSON lines bounced by a bare echo host (pipe and
   thread cost only), and the full host without an audit log (the cost of the
   two hash-chained SQLite rows per call). Target: p50 < 5 ms.
2. Agent process start without model load (``--scripted-model``): from spawn
   to Ready, as a plain subprocess and inside bubblewrap, next to a bare
   ``python -I -c pass``. Target: < 300 ms.

    .venv/bin/python bench/bench_agent.py [--calls 300] [--starts 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.host.errand import AgentHost
from agent.host.permission import PermissionAnswer, PermissionRequest
from agent.host.policy import PolicyEngine
from agent.host.sandbox import Sandbox, scrubbed_env
from agent.protocol import FinalAnswer, ToolResult, decode, encode
from vault.audit import AuditLog

AGENT = r"""
import json, sys, time
from agent.protocol import (ErrandStats, FinalAnswer, Ready, ToolRequest, decode, encode,
                            read_line)
n = int(sys.argv[1])
inp, out = sys.stdin.buffer, sys.stdout.buffer
decode(read_line(inp), sender="host")  # hello
out.write(encode(Ready(pid=0))); out.flush()
decode(read_line(inp), sender="host")  # task
times = []
for i in range(n):
    t0 = time.perf_counter()
    out.write(encode(ToolRequest(call_id=f"c{i}", tool="read_file",
                                 arguments={"path": "small.txt"})))
    out.flush()
    msg = decode(read_line(inp), sender="host")
    times.append(time.perf_counter() - t0)
    assert msg.type == "tool_result" and msg.ok, msg
stats = ErrandStats(steps=n, tool_calls=n, generated_tokens=0, stop_reason="final")
out.write(encode(FinalAnswer(text=json.dumps(times), stats=stats))); out.flush()
read_line(inp)
"""


class NeverAsk:
    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        raise AssertionError(f"the benchmark expects no prompt: {request}")


def host_round_trips(ws: Path, n: int, *, audit: AuditLog | None) -> list[float]:
    host = AgentHost(
        None,
        workspace=ws,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=NeverAsk(),
        audit=audit,
        session_id="bench",
        tools=["read_file"],
        worker_argv=[sys.executable, "-I", "-c", AGENT, str(n)],
    )
    try:
        result = host.run_errand("bench")
    finally:
        host.close()
    assert result.outcome == "final", result
    times: list[float] = json.loads(result.text)
    return times


def echo_round_trips(ws: Path, n: int) -> list[float]:
    """The same agent, answered by a host that only decodes and echoes a canned result."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", AGENT, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=scrubbed_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    content = (ws / "small.txt").read_text()
    proc.stdin.write(b'{"v":2,"type":"hello"}\n{"v":2,"type":"task","task":"b","tools":[]}\n')
    proc.stdin.flush()
    proc.stdout.readline()  # ready
    for _ in range(n):
        req = decode(proc.stdout.readline(), sender="agent")
        call_id = getattr(req, "call_id", "?")
        proc.stdin.write(encode(ToolResult(call_id=call_id, ok=True, content=content)))
        proc.stdin.flush()
    final = decode(proc.stdout.readline(), sender="agent")
    assert isinstance(final, FinalAnswer)
    proc.stdin.write(b"\n")
    proc.stdin.close()
    proc.wait()
    times: list[float] = json.loads(final.text)
    return times


def start_times(ws: Path, script: Path, *, isolate: bool) -> float:
    host = AgentHost(
        None,
        workspace=ws,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=NeverAsk(),
        audit=None,
        session_id="bench",
        scripted_model=script,
        isolate=isolate,
    )
    t0 = time.perf_counter()
    host.start()
    elapsed = time.perf_counter() - t0
    host.close()
    return elapsed


def bare_python() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-c", "pass"], check=True, env=scrubbed_env())
    return time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def row(name: str, values: list[float], base: float) -> str:
    p50 = statistics.median(values) * 1000
    return f"| {name} | {p50:.2f} | {pct(values, 0.95):.2f} | {p50 / base:.2f}x |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--starts", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = root / "ws"
        ws.mkdir()
        (ws / "small.txt").write_text("x" * 99 + "\n")
        script = root / "script.json"
        script.write_text("[]")
        audit = AuditLog(root / "keyless.db")
        echo: list[float] = []
        bare_host: list[float] = []
        full: list[float] = []
        # Interleave the variants in rounds so load changes hit them alike.
        per_round = max(1, args.calls // 5)
        for _ in range(5):
            echo += echo_round_trips(ws, per_round)
            bare_host += host_round_trips(ws, per_round, audit=None)
            full += host_round_trips(ws, per_round, audit=audit)
        base = statistics.median(echo) * 1000
        print(f"Tool round trip, {len(full)} calls per variant (ms, timed in the agent):\n")
        print("| variant | p50 ms | p95 ms | vs echo (p50) |")
        print("|---|---:|---:|---:|")
        print(row("echo host (pipe + JSON only)", echo, base))
        print(row("AgentHost, no audit log", bare_host, base))
        print(row("AgentHost with audit log (shipped)", full, base))

        sandbox = Sandbox.detect().available
        python: list[float] = []
        plain: list[float] = []
        boxed: list[float] = []
        for _ in range(args.starts):
            python.append(bare_python())
            plain.append(start_times(ws, script, isolate=False))
            if sandbox:
                boxed.append(start_times(ws, script, isolate=True))
        base = statistics.median(python) * 1000
        print(f"\nAgent process start to Ready, no model load, {args.starts} starts (ms):\n")
        print("| variant | p50 ms | p95 ms | vs bare python (p50) |")
        print("|---|---:|---:|---:|")
        print(row("python -I -c pass", python, base))
        print(row("agent worker, plain subprocess", plain, base))
        if sandbox:
            print(row("agent worker in bubblewrap", boxed, base))
        else:
            print("| agent worker in bubblewrap | n/a (bubblewrap unavailable) | | |")
        audit.close()


if __name__ == "__main__":
    main()
