"""The agent process itself, driven over its real stdin/stdout pipes."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.host.tools.registry import offers
from agent.protocol import (
    PROTOCOL_VERSION,
    AgentErrorMsg,
    AgentMessage,
    Cancel,
    FinalAnswer,
    Hello,
    HostMessage,
    ModelChunk,
    ModelDone,
    ModelRequest,
    Ready,
    Shutdown,
    Task,
    TokenChunk,
    ToolRequest,
    ToolResult,
    decode,
    encode,
)
from models.interface import GenerationStats, ModelInfo

TIMEOUT = 30.0


class Worker:
    """One ``python -m agent.worker`` process and a reader of its messages."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "agent.worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def send(self, msg: HostMessage) -> None:
        self.send_raw(encode(msg))

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def receive(self) -> AgentMessage:
        line = self.lines.get(timeout=TIMEOUT)
        assert line, f"worker closed stdout; stderr: {self.stderr()}"
        return decode(line, sender="agent")  # type: ignore[return-value]

    def until(self, kind: type) -> list[AgentMessage]:
        seen = []
        while True:
            msg = self.receive()
            seen.append(msg)
            if isinstance(msg, kind):
                return seen

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def script(tmp_path: Path, *replies: object) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps([r if isinstance(r, str) else json.dumps(r) for r in replies]))
    return path


StartWorker = Callable[..., Worker]


@pytest.fixture
def spawn() -> Iterator[StartWorker]:
    started: list[Worker] = []

    def start(*args: str) -> Worker:
        w = Worker(*args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


TASK = Task(task="list the workspace", tools=offers(["list_dir"]))


def test_a_whole_errand_over_the_pipe(tmp_path: Path, spawn: StartWorker) -> None:
    path = script(
        tmp_path,
        {"tool": "list_dir", "arguments": {"path": "."}},
        {"final": "Two files."},
    )
    w = spawn("--scripted-model", str(path))
    w.send(Hello())
    ready = w.receive()
    assert isinstance(ready, Ready) and ready.pid == w.proc.pid
    assert ready.model is not None and ready.model.backend == "fake"
    w.send(TASK)
    seen = w.until(ToolRequest)
    request = seen[-1]
    assert isinstance(request, ToolRequest)
    assert (request.tool, request.arguments) == ("list_dir", {"path": "."})
    assert "".join(m.text for m in seen if isinstance(m, TokenChunk)).startswith('{"tool":')
    w.send(ToolResult(call_id=request.call_id, ok=True, content="a.txt\nb.txt"))
    final = w.until(FinalAnswer)[-1]
    assert isinstance(final, FinalAnswer)
    assert final.text == "Two files."
    assert (final.stats.stop_reason, final.stats.tool_calls) == ("final", 1)
    w.send(Shutdown())
    assert w.wait() == 0


def test_end_of_input_stops_the_worker_cleanly(tmp_path: Path, spawn: StartWorker) -> None:
    w = spawn("--scripted-model", str(script(tmp_path)))
    w.send(Hello())
    assert isinstance(w.receive(), Ready)
    w.close_stdin()
    assert w.wait() == 0


def test_end_of_input_during_an_errand_stops_it(tmp_path: Path, spawn: StartWorker) -> None:
    path = script(tmp_path, {"tool": "list_dir", "arguments": {"path": "."}})
    w = spawn("--scripted-model", str(path))
    w.send(Hello())
    w.send(TASK)
    w.until(ToolRequest)
    w.close_stdin()
    assert w.wait() == 0


def test_malformed_lines_are_refused_with_a_clear_error(tmp_path: Path, spawn: StartWorker) -> None:
    w = spawn("--scripted-model", str(script(tmp_path, {"final": "ok"})))
    w.send_raw(b"this is not json\n")
    error = w.receive()
    assert isinstance(error, AgentErrorMsg) and error.kind == "protocol"
    assert "refused a message: line is not JSON" in error.message
    w.send_raw(b'{"v": 99, "type": "hello"}\n')
    error = w.receive()
    assert isinstance(error, AgentErrorMsg)
    assert f"protocol version 99 is not the supported version {PROTOCOL_VERSION}" in error.message
    w.send_raw(encode(ToolRequest(call_id="c1", tool="shell", arguments={})))
    error = w.receive()
    assert isinstance(error, AgentErrorMsg)
    assert "host may not send a 'tool_request'" in error.message
    # The worker is still fine after the refusals.
    w.send(Hello())
    assert isinstance(w.receive(), Ready)
    w.send(TASK)
    assert isinstance(w.until(FinalAnswer)[-1], FinalAnswer)


def test_cancel_while_waiting_for_a_tool_result(tmp_path: Path, spawn: StartWorker) -> None:
    path = script(tmp_path, {"tool": "list_dir", "arguments": {"path": "."}}, {"final": "x"})
    w = spawn("--scripted-model", str(path))
    w.send(Hello())
    w.send(TASK)
    w.until(ToolRequest)
    w.send(Cancel())
    final = w.until(FinalAnswer)[-1]
    assert isinstance(final, FinalAnswer) and final.stats.stop_reason == "cancelled"
    # A late result for the cancelled call is ignored; the next errand runs.
    w.send(ToolResult(call_id="c1", ok=True, content="late"))
    w.send(TASK)
    final = w.until(FinalAnswer)[-1]
    assert isinstance(final, FinalAnswer)
    assert (final.text, final.stats.stop_reason) == ("x", "final")


def test_the_model_can_come_from_the_hello(tmp_path: Path, spawn: StartWorker) -> None:
    path = script(tmp_path, {"final": "from the spec"})
    w = spawn()
    w.send(Hello(model_spec={"backend": "fake", "scripted_file": str(path)}))
    assert isinstance(w.receive(), Ready)
    w.send(TASK)
    final = w.until(FinalAnswer)[-1]
    assert isinstance(final, FinalAnswer) and final.text == "from the spec"


def test_a_remote_model_is_never_opened_in_the_agent(spawn: StartWorker) -> None:
    w = spawn()
    w.send(Hello(model_spec={"backend": "openai", "base_url": "https://x.test", "model_name": "m"}))
    error = w.receive()
    assert isinstance(error, AgentErrorMsg) and "must be relayed by the host" in error.message
    assert w.wait() == 1


def test_a_hello_without_a_model_is_refused(spawn: StartWorker) -> None:
    w = spawn()
    w.send(Hello())
    error = w.receive()
    assert isinstance(error, AgentErrorMsg) and "names no model" in error.message
    assert w.wait() == 1


def test_a_missing_script_is_reported(tmp_path: Path, spawn: StartWorker) -> None:
    w = spawn("--scripted-model", str(tmp_path / "missing.json"))
    w.send(Hello())
    error = w.receive()
    assert isinstance(error, AgentErrorMsg) and error.kind == "model"
    assert "cannot read scripted responses" in error.message


def test_a_relayed_model_streams_through_the_host(spawn: StartWorker) -> None:
    w = spawn()
    w.send(Hello(relayed_model=ModelInfo(name="remote", backend="openai", n_ctx=8192)))
    ready = w.receive()
    assert isinstance(ready, Ready) and ready.model is not None and ready.model.name == "remote"
    w.send(TASK)
    request = w.until(ModelRequest)[-1]
    assert isinstance(request, ModelRequest)
    assert request.json_schema is not None and "anyOf" in request.json_schema
    assert request.messages[-1].content == TASK.task
    for piece in ('{"final":', ' "relayed"}'):
        w.send(ModelChunk(request_id=request.request_id, text=piece))
    stats = GenerationStats(
        n_prompt_tokens=10, n_generated=2, time_to_first_token_s=0.01, tokens_per_second=50.0,
        stop_reason="eos",
    )
    w.send(ModelDone(request_id=request.request_id, text='{"final": "relayed"}', stats=stats))
    seen = w.until(FinalAnswer)
    assert [m.text for m in seen if isinstance(m, TokenChunk)] == ['{"final":', ' "relayed"}']
    final = seen[-1]
    assert isinstance(final, FinalAnswer) and final.text == "relayed"


def test_stdout_carries_only_protocol_lines(tmp_path: Path, spawn: StartWorker) -> None:
    path = script(tmp_path, {"final": "ok"})
    w = spawn("--scripted-model", str(path), "--log-level", "DEBUG")
    w.send(Hello())
    w.send(TASK)
    w.until(FinalAnswer)
    w.close_stdin()
    assert w.wait() == 0
    # Every line left on stdout decodes; the log went to stderr.
    rest = []
    while (line := w.lines.get(timeout=TIMEOUT)) != b"":
        rest.append(decode(line, sender="agent"))
    assert "agent[" in w.stderr()
