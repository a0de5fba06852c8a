"""GUI responsiveness benchmarks, measured side by side in one run.

1. Event-loop latency while the model streams at full speed through the
   errand controller into the chat view, vs the same window idle. A 10 ms
   probe timer runs on the GUI thread; its lateness (actual minus intended
   interval) is how long the event loop was busy. The streaming phase runs
   the real embedded model (llama.cpp) with ``ignore_eos`` in the
   controller's worker thread, each token crossing to the GUI thread as a
   queued signal and painted by the chat view, exactly as an errand's
   tokens are. The model runs in-process here (it competes with the GUI for
   the GIL), which is harsher than the app, where it runs in the agent
   process. Target: p99 < 50 ms.
2. Resident memory of the GUI host (every screen built) and of the agent
   process with the embedded model loaded. Target: < 400 MB together.
3. Cold start to the first painted main window (a fresh interpreter that
   imports the app, builds every screen and paints; no model load). Target
   < 1.5 s.

    .venv/bin/python -m bench gui
    QT_QPA_PLATFORM=offscreen .venv/bin/python bench/bench_gui.py --tokens 1500
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROBE_MS = 10


def _isolate_user_dirs() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="keyless-bench-gui-"))
    os.environ["KEYLESS_DATA_DIR"] = str(tmp / "data")
    os.environ["KEYLESS_CONFIG_DIR"] = str(tmp / "config")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Probe:
    """Measures how late a periodic GUI-thread timer fires."""

    def __init__(self) -> None:
        from app.qt import Qt, QTimer

        self.late_ms: list[float] = []
        self._last = 0.0
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(PROBE_MS)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last:
            self.late_ms.append(max(0.0, (now - self._last) * 1000 - PROBE_MS))
        self._last = now

    def start(self) -> None:
        self.late_ms.clear()
        self._last = 0.0
        self._timer.start()

    def stop(self) -> list[float]:
        self._timer.stop()
        return list(self.late_ms)


class ModelStreamRunner:
    """Streams the real embedded model into the controller's events (worker thread)."""

    def __init__(self, ctx: Any, model: Any, n_tokens: int) -> None:
        self.ctx = ctx
        self.model = model
        self.n_tokens = n_tokens
        self.cancel_token: Any = None
        self.generated = 0
        self.seconds = 0.0

    def run_errand(self, task: str) -> None:
        from models.interface import CancelToken, Finished, Message, Token

        self.cancel_token = CancelToken()
        start = time.perf_counter()
        for event in self.model.stream_chat(
            [Message(role="user", content=task)],
            max_tokens=self.n_tokens,
            ignore_eos=True,
            cancel=self.cancel_token,
        ):
            if isinstance(event, Token):
                self.ctx.events.token(event.text)
            elif isinstance(event, Finished):
                self.generated = event.stats.n_generated
                self.seconds = time.perf_counter() - start
                self.ctx.events.final("", event.stats.model_dump())

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()

    def close(self) -> None:
        pass


def run_latency(n_tokens: int, n_ctx: int) -> list[dict[str, Any]]:
    from app.controllers.errand_controller import ErrandController
    from app.qt import QtWidgets
    from app.views.chat_view import ChatView
    from models.catalog import embedded_default
    from models.runtime import Runtime, RuntimeConfig

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    model = Runtime(RuntimeConfig(model_path=embedded_default().path, n_ctx=n_ctx))
    runners: list[ModelStreamRunner] = []

    def factory(ctx: Any) -> ModelStreamRunner:
        runner = ModelStreamRunner(ctx, model, n_tokens)
        runners.append(runner)
        return runner

    workspace = Path(tempfile.mkdtemp(prefix="keyless-bench-ws-"))
    controller = ErrandController(factory, workspace=workspace)
    view = ChatView(controller)
    view.resize(1100, 750)
    view.show()
    probe = Probe()
    done = threading.Event()
    controller.errandFinished.connect(lambda _: done.set())

    def spin_until(predicate: Any, limit_s: float) -> None:
        end = time.perf_counter() + limit_s
        while not predicate() and time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.0005)

    try:
        # Warm up: paint the window once and load the model's first batch.
        spin_until(lambda: False, 0.3)
        probe.start()
        controller.start("Tell a very long story about a lighthouse keeper.")
        spin_until(done.is_set, 600)
        stream_late = probe.stop()
        runner = runners[-1]
        stream_seconds = runner.seconds
        tps = runner.generated / stream_seconds if stream_seconds else 0.0

        probe.start()
        spin_until(lambda: False, max(2.0, stream_seconds))
        idle_late = probe.stop()
    finally:
        controller.shutdown(10_000)
        model.close()
        view.close()

    return [
        {"phase": "idle window", "late": idle_late, "tps": None, "tokens": 0},
        {
            "phase": "model streaming through the controller",
            "late": stream_late,
            "tps": tps,
            "tokens": runners[-1].generated,
        },
    ]


COLD_START_CHILD = r"""
import os, sys, time
from app.qt import QtCore, QtWidgets
app = QtWidgets.QApplication(sys.argv[:1])
from app.gui import build_main_window
from app.services import AppServices
window = build_main_window(AppServices(), runner_factory=lambda ctx: None)

class FirstPaint(QtCore.QObject):
    def eventFilter(self, obj, event):
        if event.type() == QtCore.QEvent.Type.Paint:
            print("PAINTED", flush=True)
            QtCore.QTimer.singleShot(0, app.quit)
        return False

watcher = FirstPaint()
window.installEventFilter(watcher)
window.show()
app.exec()
window.shutdown()
"""


def run_cold_start(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", COLD_START_CHILD],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=os.environ.copy(),
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("PAINTED"):
                times.append(time.perf_counter() - start)
                break
        proc.wait(60)
    return times


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _tree_rss_kib(pid: int) -> int:
    """RSS of a process and all its descendants (bubblewrap runs the agent as a child)."""
    total = _rss_kib(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        total += sum(_tree_rss_kib(int(child)) for child in children)
    return total


class _NeverAsked:
    def ask(self, question: Any) -> Any:
        raise AssertionError("no errand runs in the memory benchmark")


def run_rss() -> list[tuple[str, float]]:
    """Resident memory: the GUI host with every screen built, and the agent with the model."""
    from agent.host.errand import AgentHost
    from agent.host.policy import PolicyEngine
    from app.controllers.agent_runner import HostPrompt
    from app.gui import build_main_window, model_spec_for
    from app.qt import QtWidgets
    from app.services import AppServices

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    services = AppServices()
    window = build_main_window(services, runner_factory=lambda ctx: None)
    window.show()
    for index in range(window.tabs.count()):
        window.show_tab(index)
        app.processEvents()
    host_kib = _rss_kib(os.getpid())
    workspace = Path(tempfile.mkdtemp(prefix="keyless-bench-ws-"))
    host = AgentHost(
        model_spec_for(services),
        workspace=workspace,
        broker=None,
        memory=None,
        policy=PolicyEngine(),
        prompt=HostPrompt(_NeverAsked()),
        audit=None,
        session_id="bench",
    )
    try:
        host.start()  # returns once the agent process has loaded the model
        pid = host.worker_pid
        agent_kib = _tree_rss_kib(pid) if pid is not None else 0
    finally:
        host.close()
        window.shutdown()
    return [
        ("GUI host, every screen built", host_kib / 1024),
        ("agent process with the embedded model loaded", agent_kib / 1024),
        ("together", (host_kib + agent_kib) / 1024),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1200, help="tokens to stream")
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--cold-starts", type=int, default=3)
    args = parser.parse_args(argv)
    _isolate_user_dirs()
    sys.path.insert(0, str(ROOT))

    rows = run_latency(args.tokens, args.n_ctx)
    print(f"### Event-loop latency ({PROBE_MS} ms probe timer on the GUI thread)\n")
    print("| phase | probe ticks | tokens | tok/s | p50 late (ms) | p99 late (ms) | max (ms) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        late = row["late"]
        tps = f"{row['tps']:.0f}" if row["tps"] else "—"
        print(
            f"| {row['phase']} | {len(late)} | {row['tokens']} | {tps} | "
            f"{percentile(late, 50):.2f} | {percentile(late, 99):.2f} | {max(late):.2f} |"
        )
    idle99 = percentile(rows[0]["late"], 99)
    stream99 = percentile(rows[1]["late"], 99)
    verdict = "meets" if stream99 < 50 else "MISSES"
    print(
        f"\nStreaming vs idle p99: {stream99:.2f} ms vs {idle99:.2f} ms "
        f"(+{stream99 - idle99:.2f} ms); {verdict} the target p99 < 50 ms.\n"
    )

    print("### Resident memory (RSS)\n")
    print("| process | RSS (MiB) |")
    print("|---|---|")
    for name, mib in run_rss():
        print(f"| {name} | {mib:.0f} |")
    print("\nTarget: < 400 MB together.\n")

    if args.cold_starts:
        times = run_cold_start(args.cold_starts)
        print("### Cold start to the first painted main window (no model load)\n")
        print("| runs | median (s) | best (s) | worst (s) | target |")
        print("|---|---|---|---|---|")
        print(
            f"| {len(times)} | {statistics.median(times):.2f} | {min(times):.2f} | "
            f"{max(times):.2f} | < 1.5 s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
