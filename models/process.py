"""Run a local model in a child process, so a llama.cpp crash cannot take the host down.

llama.cpp is C++: an abort, a SIGSEGV in a kernel (llama.cpp #20824 on AMX
machines) or an out-of-memory kill would end whatever process loaded it. The
agent's model already lives in the agent process; everything else in the
host that needs a model (memory distillation, the terminal chat) uses
:class:`ProcessModel`, a :class:`~models.interface.ChatModel` whose model
runs in ``python -m models.serve`` (``keyless --model-server`` when frozen).

The pipe carries one JSON object per line. Host → child: ``chat``,
``cancel``, ``count``, ``state``, ``reset``, ``close``. Child → host:
``ready``, ``token``, ``finished``, ``error``, ``count``, ``state``. When the
child dies, every call raises :class:`~models.errors.ModelProcessError` with
the tail of its stderr, and the host carries on.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from models.backends import runs_in_host, source_arguments, source_for
from models.errors import (
    ContextTooSmallError,
    GenerationError,
    ModelError,
    ModelFileError,
    ModelLoadError,
    ModelProcessError,
)
from models.factory import ModelSpec
from models.interface import (
    CancelToken,
    ContextState,
    Finished,
    GenerationStats,
    Message,
    ModelInfo,
    StreamEvent,
    Token,
)

#: Longest line either side accepts (a whole generation's text fits easily).
MAX_LINE = 8 * 1024 * 1024
_ERRORS: dict[str, type[ModelError]] = {
    cls.__name__: cls
    for cls in (ModelError, ModelFileError, ModelLoadError, GenerationError, ContextTooSmallError)
}


def server_argv() -> list[str]:
    """The command that starts the model server (a frozen bundle dispatches on a flag)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--model-server"]
    return [sys.executable, "-I", "-m", "models.serve"]


class ProcessModel:
    """A :class:`~models.interface.ChatModel` served by a child process.

    Args:
        spec: The model to load: a backend that runs in the agent (a local one).
        start_timeout: Seconds to wait for the model to load.
        argv: Replace the server command (tests of crash handling).

    Raises:
        ModelProcessError: The child could not start or died while loading.
        ModelError: The child reported why the model could not be opened.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        start_timeout: float = 120.0,
        argv: Sequence[str] | None = None,
    ) -> None:
        if runs_in_host(spec):
            raise ModelError("a remote model needs no model process; open it directly")
        source = source_for(spec.backend)
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=30)
        env = {k: v for k, v in os.environ.items() if k.startswith(("LANG", "LC_", "OMP_"))}
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        if "PYTHONPATH" in os.environ and not getattr(sys, "frozen", False):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                [
                    *(argv or server_argv()),
                    *source_arguments([source] if source is not None else []),
                    spec.model_dump_json(),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,  # a Ctrl+C in the terminal reaches us, not it
            )
        except OSError as e:
            raise ModelProcessError(f"cannot start the model process: {e.strerror}") from e
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._stdin: IO[bytes] = self._proc.stdin
        threading.Thread(target=self._read_stdout, daemon=True, name="model-stdout").start()
        threading.Thread(target=self._read_stderr, daemon=True, name="model-stderr").start()
        try:
            ready = self._next(start_timeout)
        except ModelProcessError:
            self._proc.kill()
            raise
        if ready.get("ev") != "ready":
            self._closed = False
            self.close()
            if ready.get("ev") == "error":
                raise _error_from(ready)
            raise ModelProcessError(f"the model process did not start: {ready.get('ev')!r}")
        self._info = ModelInfo.model_validate(ready["info"])
        self._closed = False

    # -- ChatModel ---------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """Describe the model the child loaded."""
        return self._info

    def stream_chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        json_schema: Mapping[str, Any] | None = None,
        temperature: float = 0.0,
        ignore_eos: bool = False,
        cancel: CancelToken | None = None,
    ) -> Iterator[StreamEvent]:
        """Generate in the child; see :meth:`models.interface.ChatModel.stream_chat`."""
        request = {
            "op": "chat",
            "messages": [m.model_dump() for m in messages],
            "max_tokens": max_tokens,
            "json_schema": dict(json_schema) if json_schema is not None else None,
            "temperature": temperature,
            "ignore_eos": ignore_eos,
        }
        return self._stream(request, cancel)

    def count_tokens(self, text: str) -> int:
        """Count tokens with the child's tokenizer."""
        reply = self._request({"op": "count", "text": text}, "count")
        return int(reply["n"])

    def context_state(self) -> ContextState:
        """Return what the child's KV cache holds."""
        reply = self._request({"op": "state"}, "state")
        return ContextState.model_validate(reply["state"])

    def reset(self) -> None:
        """Clear the child's cache."""
        self._request({"op": "reset"}, "state")

    def close(self) -> None:
        """Stop the child (it frees the model). Safe to call twice."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            self._send({"op": "close"})
        except ModelProcessError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    # -- internals ---------------------------------------------------------------

    def _stream(self, request: dict[str, Any], cancel: CancelToken | None) -> Iterator[StreamEvent]:
        with self._lock:
            self._send(request)
            cancel_sent = False
            done = False
            try:
                while True:
                    event = self._next(0.05 if cancel is not None else None, allow_timeout=True)
                    if cancel is not None and cancel.cancelled and not cancel_sent:
                        self._send({"op": "cancel"})
                        cancel_sent = True
                    if not event:
                        continue
                    kind = event.get("ev")
                    if kind == "token":
                        yield Token(text=str(event["text"]))
                    elif kind == "finished":
                        stats = GenerationStats.model_validate(event["stats"])
                        done = True
                        yield Finished(text=str(event["text"]), stats=stats)
                        return
                    elif kind == "error":
                        done = True
                        raise _error_from(event)
                    else:
                        raise ModelProcessError(f"the model process sent an unexpected {kind!r}")
            finally:
                if not done and self._proc.poll() is None:
                    # The caller stopped reading (Ctrl+C, an exception): stop the
                    # child and drain, or the next request would read these tokens.
                    self._drain_after_cancel(cancel_sent)

    def _drain_after_cancel(self, cancel_sent: bool) -> None:
        try:
            if not cancel_sent:
                self._send({"op": "cancel"})
            while True:
                event = self._next(30.0)
                if event.get("ev") in ("finished", "error"):
                    return
        except ModelProcessError:
            return

    def _request(self, request: dict[str, Any], expected: str) -> dict[str, Any]:
        with self._lock:
            self._send(request)
            reply = self._next(60.0)
        if reply.get("ev") == "error":
            raise _error_from(reply)
        if reply.get("ev") != expected:
            raise ModelProcessError(f"the model process answered {reply.get('ev')!r}")
        return reply

    def _send(self, message: dict[str, Any]) -> None:
        if self._proc.poll() is not None:
            raise self._died()
        try:
            self._stdin.write(json.dumps(message).encode() + b"\n")
            self._stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as e:
            raise self._died() from e

    def _next(self, timeout: float | None, *, allow_timeout: bool = False) -> dict[str, Any]:
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            if allow_timeout:
                return {}
            self._proc.kill()
            raise ModelProcessError(
                f"the model process did not answer within {timeout:.0f} s"
            ) from None
        if event is None:
            raise self._died()
        return event

    def _died(self) -> ModelProcessError:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = "".join(self._stderr).strip()[-1500:]
        how = f"exited with status {code}" if code is not None else "stopped answering"
        detail = f": {tail}" if tail else ""
        return ModelProcessError(f"the model process {how}{detail}")

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        try:
            while True:
                line = self._proc.stdout.readline(MAX_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_LINE or not line.endswith(b"\n"):
                    self._events.put(_protocol_error("the model process sent an oversized line"))
                    break
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError("not an object")
                except ValueError:
                    self._events.put(_protocol_error("the model process sent a non-JSON line"))
                    break
                self._events.put(event)
        finally:
            self._events.put(None)

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for raw in iter(self._proc.stderr.readline, b""):
            self._stderr.append(raw.decode("utf-8", errors="replace")[:500])


def _protocol_error(message: str) -> dict[str, Any]:
    return {"ev": "error", "type": "ModelProcessError", "message": message}


def _error_from(event: Mapping[str, Any]) -> ModelError:
    cls = _ERRORS.get(str(event.get("type")), ModelProcessError)
    return cls(str(event.get("message", "the model process failed")))


def open_isolated(spec: ModelSpec) -> Any:
    """Open ``spec`` for use in the host: local models in a child process.

    A remote model holds no llama.cpp and is opened directly.

    Raises:
        ModelError: The model cannot be opened.
    """
    if runs_in_host(spec):
        from models.factory import open_model

        return open_model(spec)
    return ProcessModel(spec)
