"""Shell tool overhead: a command in its own bubblewrap sandbox vs a plain subprocess.

Run: ``.venv/bin/python -m bench.bench_sandbox [--runs N]`` (or ``python bench/bench_sandbox.py``).

The variants run interleaved (one of each per round) so machine noise hits all
of them alike. Target: sandboxed spawn ≤ plain subprocess + 25 ms at p50.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.host.sandbox import Limits, Sandbox, run_unsandboxed, scrubbed_env  # noqa: E402

COMMAND = "echo hi"


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args(argv)
    sandbox = Sandbox.detect()
    limits = Limits()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        variants: dict[str, Callable[[], object]] = {
            "plain subprocess (sh -c)": lambda: subprocess.run(
                ["/bin/sh", "-c", COMMAND], cwd=ws, env=scrubbed_env(),
                capture_output=True, check=True,
            ),
            "limits only (prlimit, timer, output cap)": lambda: run_unsandboxed(
                COMMAND, ws, limits
            ),
        }  # fmt: skip
        if sandbox.available:
            argv = sandbox.shell_argv(COMMAND, ws, limits)
            variants["same bwrap argv, plain subprocess.run"] = lambda: subprocess.run(
                argv, env=scrubbed_env(), capture_output=True, check=True
            )
            variants["bubblewrap sandbox (shell tool)"] = lambda: sandbox.run_shell(
                COMMAND, ws, limits
            )
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for fn in variants.values():  # warm-up: page cache, imports
            fn()
        for _ in range(args.runs):
            for name, fn in variants.items():
                samples[name].append(_time(fn))
    base = statistics.median(samples["plain subprocess (sh -c)"])
    print(f"shell `{COMMAND}`, {args.runs} interleaved runs each\n")
    print("| variant | p50 ms | p95 ms | vs plain (p50) | + ms vs plain (p50) |")
    print("|---|---:|---:|---:|---:|")
    for name, values in samples.items():
        p50 = statistics.median(values)
        print(
            f"| {name} | {p50:.1f} | {_pct(values, 0.95):.1f} | {p50 / base:.2f}x | "
            f"{p50 - base:+.1f} |"
        )
    if not sandbox.available:
        print("\nbubblewrap unavailable: sandboxed variant not measured")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
