"""The agent process as the host sees it: spawn, bounded pipes, exit watch, crash reports.

:class:`WorkerProcess` starts one agent process with a complete (scrubbed)
environment, writes protocol lines without ever blocking the host for long,
reads and validates its output lines on a thread, keeps the tail of its
stderr for crash reports, and notices at once when it dies.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from agent.errors import (
    AgentCrashedError,
    ProtocolError,
)
from agent.protocol import (
    MAX_LINE,
    AgentMessage,
    AnyMessage,
    decode,
    encode,
)

log = logging.getLogger(__name__)

STDERR_LINE_BYTES = 4096
"""Longest piece of one agent log line kept (the rest comes as further pieces)."""

WRITE_TIMEOUT_S = 30.0
"""How long a write to the agent may wait for it to read its input."""


class WorkerProcess:
    """One agent process and its pipes, with bounded, validated reads.

    A reader thread reads stdout lines (at most :data:`MAX_LINE` bytes) into a
    queue, so :meth:`receive` can wait with a timeout; another drains stderr
    into the host's log and keeps its tail for crash reports.

    Args:
        argv: The command (already wrapped in bubblewrap if isolated).
        env: The complete environment (scrubbed; never the host's).
        transcript: Called with ("sent"|"received", line) for every line.
        write_timeout: Seconds a write may wait for the agent to read its input.
        wrapped: ``argv`` starts bubblewrap, whose exit status 128+N means
            the agent inside was killed by signal N.
        on_gone: Called once with this process, from a watcher thread, as
            soon as the process exits or closes its output (see :attr:`gone`).

    Attributes:
        gone: Set the moment the agent exits or closes its output, so a host
            thread busy elsewhere (a tool call, a permission prompt) can stop
            at once instead of finding out at its next read or write.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        transcript: Callable[[str, bytes], None] | None = None,
        write_timeout: float = WRITE_TIMEOUT_S,
        wrapped: bool = False,
        on_gone: Callable[[WorkerProcess], None] | None = None,
    ) -> None:
        self._transcript = transcript
        self._write_timeout = write_timeout
        self._wrapped = wrapped
        self._on_gone = on_gone
        self._gone_lock = threading.Lock()
        self.gone = threading.Event()
        self._send_lock = threading.Lock()
        self._lines: queue.Queue[bytes | BaseException | None] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=40)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - argv is built by the host, no shell
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env),
                cwd=cwd,
                close_fds=True,
                # Off the user's terminal session, also without bubblewrap's
                # --new-session: no TIOCSTI into the controlling terminal.
                start_new_session=True,
            )
        except OSError as e:
            raise AgentCrashedError(f"cannot start the agent process: {e}") from e
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._stdin: IO[bytes] = self._proc.stdin
        self._fd = self._stdin.fileno()
        os.set_blocking(self._fd, False)
        threading.Thread(
            target=self._read_stdout, args=(self._proc.stdout,), daemon=True, name="agent-stdout"
        ).start()
        self._stderr_reader = threading.Thread(
            target=self._read_stderr, args=(self._proc.stderr,), daemon=True, name="agent-stderr"
        )
        self._stderr_reader.start()
        threading.Thread(target=self._watch_exit, daemon=True, name="agent-watch").start()

    @property
    def pid(self) -> int:
        """The process id (of bwrap when isolated)."""
        return self._proc.pid

    def send(self, msg: AnyMessage, *, timeout: float | None = None) -> None:
        """Write one message to the agent.

        The pipe is non-blocking: an agent that stops reading its input cannot
        block the host for longer than ``timeout``.

        Raises:
            AgentCrashedError: The pipe is closed (the agent died), or the agent
                did not read its input for ``timeout`` seconds.
        """
        line = encode(msg)
        timeout = self._write_timeout if timeout is None else timeout
        with self._send_lock:  # one whole line at a time
            if self._transcript is not None:
                self._transcript("sent", line)
            view = memoryview(line)
            deadline = time.monotonic() + timeout
            while view:
                try:
                    view = view[os.write(self._fd, view) :]
                except BlockingIOError:
                    pass
                except OSError as e:  # EPIPE, or the pipe was closed by kill()
                    raise AgentCrashedError(f"the agent process stopped reading: {e}") from e
                if not view:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AgentCrashedError(
                        f"the agent process did not read its input for {timeout:g} s"
                    )
                select.select([], [self._fd], [], remaining)

    def receive(self, timeout: float) -> AgentMessage:
        """Wait at most ``timeout`` seconds for the agent's next message.

        Raises:
            AgentCrashedError: End of output, or nothing within the timeout.
            ProtocolError: The agent wrote a malformed, oversized or wrong message.
        """
        msg = self.poll(timeout)
        if msg is None:
            raise AgentCrashedError(f"the agent process sent nothing for {timeout:g} s")
        return msg

    def poll(self, timeout: float) -> AgentMessage | None:
        """Like :meth:`receive`, but return None when nothing came within ``timeout``.

        Raises:
            AgentCrashedError: End of output.
            ProtocolError: The agent wrote a malformed, oversized or wrong message.
        """
        try:
            item = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self._lines.put(None)  # stay at end of output for later readers
            raise AgentCrashedError(self.exit_reason())
        if isinstance(item, BaseException):
            raise ProtocolError(str(item)) from item
        if self._transcript is not None:
            self._transcript("received", item)
        msg = decode(item, sender="agent")
        return msg  # type: ignore[return-value]  # decode(sender="agent") only returns agent messages

    def stop(self, *, grace: float = 2.0) -> int | None:
        """Close stdin, then terminate and kill if the process lingers; return its status."""
        try:
            self._stdin.close()
        except OSError:
            log.debug("agent stdin already closed")
        try:
            return self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
        try:
            return self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return self._proc.wait()

    def exit_reason(self) -> str:
        """Why the agent is gone ("was killed (signal 9)", "exited with status 3").

        Waits briefly for an agent that closed its output but lingers, then kills it.
        """
        try:
            code = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return "the agent process closed its output and was killed"
        if code < 0:
            return f"the agent process was killed (signal {-code})"
        if self._wrapped and code > 128:
            # bubblewrap reports its child's death by signal N as 128+N.
            return f"the agent process was killed (signal {code - 128})"
        return f"the agent process exited with status {code}"

    def _set_gone(self) -> None:
        with self._gone_lock:
            if self.gone.is_set():
                return
            self.gone.set()
        if self._on_gone is not None:
            try:
                self._on_gone(self)
            except Exception:  # a watcher thread has no one to report to but the log
                log.exception("reacting to the agent's exit failed")

    def _watch_exit(self) -> None:
        # WNOWAIT: notice the exit without reaping, so Popen still gets the status.
        try:
            os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass  # already reaped by kill()/stop()
        except (OSError, AttributeError) as e:  # no waitid (macOS): end of output still tells
            log.debug("cannot watch the agent process: %s", e)
            return
        self._set_gone()

    def kill(self) -> None:
        """Kill the process at once (after garbage or a hang)."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        try:
            self._stdin.close()
        except OSError:
            log.debug("agent stdin already closed")
        # Its last log lines explain the crash: let the reader reach end of file.
        self._stderr_reader.join(timeout=2.0)

    def _read_stdout(self, stream: IO[bytes]) -> None:
        try:
            while True:
                line = stream.readline(MAX_LINE + 1)
                if not line:
                    break
                if len(line) > MAX_LINE:
                    raise ProtocolError(f"the agent wrote a line over the {MAX_LINE}-byte limit")
                self._lines.put(line)
        except (OSError, ValueError, ProtocolError) as e:
            self._lines.put(e)
        finally:
            self._lines.put(None)
            self._set_gone()

    def _read_stderr(self, stream: IO[bytes]) -> None:
        # Bounded lines: an agent flooding stderr costs the host no more than the tail.
        for raw in iter(lambda: stream.readline(STDERR_LINE_BYTES), b""):
            text = raw.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(text)
            log.debug("agent: %s", text)
