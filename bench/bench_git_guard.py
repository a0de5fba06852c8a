"""The git guard's cost on a large workspace: a shell command's start and end.

Run: ``.venv/bin/python -m bench.bench_git_guard [--dirs N] [--files N] [--runs N]``.

Before each sandboxed shell command the guard finds every ``.git`` in the
workspace, after it the ``.git`` entries the command created. On a workspace
of ``dirs × files`` files (and one repository) this times the guard alone
(scan before, scan after) and a whole ``run_shell("true")``, p50 over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.host.protected import CTIME_MARGIN_NS  # noqa: E402
from agent.host.sandbox import GitGuard, Limits, Sandbox  # noqa: E402


def _make_workspace(ws: Path, dirs: int, files: int) -> None:
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / ".git" / "config").write_text("[core]\n")
    for d in range(dirs):
        sub = ws / f"pkg{d // 50}" / f"mod{d}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"file{f}.py").write_bytes(b"")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dirs", type=int, default=1000)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    sandbox = Sandbox.detect()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        _make_workspace(ws, args.dirs, args.files)
        # A workspace not changed in the last moments, as a project usually is:
        # only directories older than the margin are trusted unchanged.
        time.sleep(CTIME_MARGIN_NS / 1e9 + 0.2)
        print(f"workspace: {args.dirs} directories x {args.files} files")
        start = time.perf_counter()
        GitGuard(ws).finish()
        print(f"guard, first command (every directory read): {_ms(start):.1f} ms")
        before: list[float] = []
        after: list[float] = []
        for _ in range(args.runs):
            start = time.perf_counter()
            guard = GitGuard(ws, previous=sandbox.last_git_scan(ws))
            before.append(_ms(start))
            start = time.perf_counter()
            guard.finish()
            sandbox.remember_git_scan(guard.scan_after)
            after.append(_ms(start))
        print(f"guard, before the command: p50 {statistics.median(before):.1f} ms")
        print(f"guard, after the command:  p50 {statistics.median(after):.1f} ms")
        if sandbox.available:
            runs: list[float] = []
            for _ in range(args.runs):
                start = time.perf_counter()
                sandbox.run_shell("true", ws, Limits())
                runs.append(_ms(start))
            print(f"run_shell('true'):          p50 {statistics.median(runs):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
