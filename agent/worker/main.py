"""The agent process: ``python -m agent.worker``.

The host starts it (scrubbed environment, inside bubblewrap where available)
and speaks :mod:`agent.protocol` on its stdin/stdout. The worker owns the model
and runs the errand loop; it never sees a secret, the vault or the network.

Its stdout is the protocol channel only: at start the worker moves the real
stdout to a private file descriptor and points fd 1 at stderr, so a stray
``print`` or a C library's output can never corrupt the pipe. Logging goes to
stderr, which the host keeps for crash reports.

Lifecycle: the host sends Hello; the worker opens the model and answers Ready;
then each Task is run to one FinalAnswer (or an AgentErrorMsg). Tasks of one
conversation (the same ``Task.conversation`` id) continue one history, which
the model's KV cache keeps (:mod:`agent.worker.conversation`). Cancel stops
the running errand at the next token; Shutdown or end of input ends the process
with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

from agent.errors import AgentError, ErrandCancelledError, ProtocolError
from agent.protocol import (
    AgentErrorMsg,
    AnyMessage,
    Cancel,
    Hello,
    HostMessage,
    Ready,
    RestoreState,
    SaveState,
    Shutdown,
    Task,
    ToolRequest,
    ToolResult,
    decode,
    encode,
    read_line,
)
from agent.worker import saved
from agent.worker.executor import Executor
from agent.worker.relay import RelayedModel
from models.errors import ModelError
from models.interface import CancelToken, ChatModel

log = logging.getLogger("agent.worker")

_WAKE = object()
"""Put in the inbox to wake a waiter after a Cancel, a Shutdown or end of input."""


class Channel:
    """The worker's end of the pipe.

    A reader thread decodes the host's lines. Cancel and Shutdown act at once
    (they fire the running errand's :class:`CancelToken`); every other message
    goes to an inbox the errand loop reads.
    """

    def __init__(self, infile: BinaryIO, outfile: BinaryIO) -> None:
        self._in = infile
        self._out = outfile
        self._send_lock = threading.Lock()
        self._inbox: queue.Queue[object] = queue.Queue()
        self._cancel = CancelToken()
        self._cancel_lock = threading.Lock()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="host-reader", daemon=True)

    def start(self) -> None:
        """Start reading the host's messages."""
        self._reader.start()

    def send(self, msg: AnyMessage) -> None:
        """Write one message to the host (thread-safe)."""
        line = encode(msg)
        with self._send_lock:
            try:
                self._out.write(line)
                self._out.flush()
            except (BrokenPipeError, ValueError) as e:  # ValueError: file closed
                self.closed.set()
                raise ProtocolError("the host closed the pipe") from e

    def errand_cancel(self) -> CancelToken:
        """Return the cancel token of the last Task received (a Cancel fires it).

        The reader thread makes the token when the Task arrives, so a Cancel
        sent right after a Task can never hit the previous errand's token.
        """
        with self._cancel_lock:
            return self._cancel

    def next_message(self) -> HostMessage | None:
        """Block until the next inbox message; None once the input is closed."""
        while True:
            if self.closed.is_set() and self._inbox.empty():
                return None
            item = self._inbox.get()
            if item is _WAKE:
                continue
            return item  # type: ignore[return-value]  # only messages and _WAKE go in

    def receive(self, cancel: CancelToken) -> HostMessage | None:
        """Wait for the next message; None when ``cancel`` fired or the input closed."""
        while True:
            if cancel.cancelled or (self.closed.is_set() and self._inbox.empty()):
                return None
            item = self._inbox.get()
            if item is _WAKE:
                continue
            return item  # type: ignore[return-value]  # only messages and _WAKE go in

    def _read_loop(self) -> None:
        try:
            while True:
                try:
                    line = read_line(self._in)
                    if line is None:
                        log.info("end of input: stopping")
                        break
                    msg = decode(line, sender="host")
                except ProtocolError as e:
                    log.warning("refused a message from the host: %s", e)
                    refusal = AgentErrorMsg(message=f"refused a message: {e}", kind="protocol")
                    self._try_send(refusal)
                    continue
                if isinstance(msg, Cancel):
                    with self._cancel_lock:
                        self._cancel.cancel()
                    self._inbox.put(_WAKE)
                elif isinstance(msg, Shutdown):
                    break
                elif isinstance(msg, Task):
                    with self._cancel_lock:
                        self._cancel = CancelToken()
                    self._inbox.put(msg)
                else:
                    self._inbox.put(msg)
        finally:
            self.closed.set()
            with self._cancel_lock:
                self._cancel.cancel()
            self._inbox.put(_WAKE)

    def _try_send(self, msg: AnyMessage) -> None:
        try:
            self.send(msg)
        except ProtocolError:
            log.info("could not report to the host: the pipe is closed")


class PipeToolCaller:
    """Carries the executor's tool calls to the host through the channel."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def call(self, request: ToolRequest, cancel: CancelToken) -> ToolResult:
        """Send ``request`` and wait for the host's result.

        Raises:
            ErrandCancelledError: The errand was cancelled (or the host went
                away) before the result came.
        """
        self._channel.send(request)
        while True:
            msg = self._channel.receive(cancel)
            if msg is None:
                raise ErrandCancelledError("cancelled while waiting for a tool result")
            if isinstance(msg, ToolResult) and msg.call_id == request.call_id:
                return msg
            log.info("ignored a %s while waiting for result %s", msg.type, request.call_id)


def open_model(hello: Hello, channel: Channel, scripted_file: str | None) -> ChatModel:
    """Open the model the host asked for.

    Raises:
        ModelError: The model cannot be opened.
        ProtocolError: The Hello does not say which model to run.
    """
    if scripted_file is not None:
        from models.fake import ScriptedModel

        return ScriptedModel.from_file(scripted_file)
    if hello.relayed_model is not None:
        return RelayedModel(channel, hello.relayed_model)
    if hello.model_spec is not None:
        from models.backends import runs_in_host
        from models.factory import open_model as factory_open

        spec = hello.model_spec
        if runs_in_host(spec):
            # Defence in depth: the host relays remote models; this process has no network.
            raise ProtocolError("a remote model must be relayed by the host, not opened here")
        return factory_open(spec)
    raise ProtocolError("the hello message names no model and no --scripted-model was given")


def serve(channel: Channel, scripted_file: str | None = None) -> int:
    """Run the worker's message loop until Shutdown or end of input.

    Returns:
        The process exit status: 0 after a clean stop, 1 when the start failed.
    """
    first = channel.next_message()
    if first is None:
        return 0
    if not isinstance(first, Hello):
        channel.send(AgentErrorMsg(message=f"expected hello, got {first.type}", kind="protocol"))
        return 1
    try:
        model = open_model(first, channel, scripted_file)
    except (ModelError, AgentError, ValueError, OSError) as e:
        log.error("cannot open the model: %s", e)
        channel.send(AgentErrorMsg(message=f"cannot open the model: {e}", kind="model"))
        return 1
    try:
        channel.send(Ready(pid=os.getpid(), model=model.info))
        executor = Executor(model, PipeToolCaller(channel), channel.send)
        while (msg := channel.next_message()) is not None:
            if isinstance(msg, SaveState | RestoreState):
                channel.send(saved.handle(msg, model, executor))
                continue
            if not isinstance(msg, Task):
                log.info("ignored a %s message between errands", msg.type)
                continue
            cancel = channel.errand_cancel()
            try:
                channel.send(executor.run(msg, cancel))
            except (ModelError, AgentError) as e:
                if channel.closed.is_set():
                    break
                log.warning("errand failed: %s", e)
                # The model's cache and the conversation may disagree now.
                executor.forget()
                kind = "model" if isinstance(e, ModelError) else "internal"
                channel.send(AgentErrorMsg(message=str(e), kind=kind))
    except ProtocolError as e:
        log.info("stopping: %s", e)
    finally:
        model.close()
    return 0


def _protocol_streams() -> tuple[BinaryIO, BinaryIO]:
    """Take stdin/stdout for the protocol and point fd 1 at stderr."""
    out_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return sys.stdin.buffer, os.fdopen(out_fd, "wb")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m agent.worker``."""
    parser = argparse.ArgumentParser(prog="python -m agent.worker", description=__doc__)
    parser.add_argument(
        "--scripted-model",
        metavar="FILE",
        help="run the scripted fake model from a JSON list of replies (tests)",
    )
    parser.add_argument(
        "--backend-source",
        action="append",
        default=[],
        metavar="JSON",
        help="a model backend module the host registered at run time: load it first",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s agent[%(process)d] %(levelname)s %(message)s",
    )
    from models.backends import BackendSource, load_source

    # Before any message: the Hello's ModelSpec is validated by its backend.
    for source in args.backend_source:
        load_source(BackendSource.model_validate_json(source))
    infile, outfile = _protocol_streams()
    channel = Channel(infile, outfile)
    channel.start()
    try:
        return serve(channel, args.scripted_model)
    finally:
        try:
            outfile.flush()
        except OSError:
            log.info("stdout was already closed by the host")
