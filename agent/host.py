"""The trusted side of an errand: start the agent process, decide and run its tool calls.

:class:`AgentHost` starts ``python -m agent.worker`` (inside bubblewrap when the
sandbox can, otherwise as a plain subprocess with a scrubbed environment, and
says which to its listener), sends it the task with the memory context and the
session's capability handles, and answers each tool request:

1. validate the arguments (a bad call goes back to the model as an error);
2. ask the policy (deny > ask > allow; once untrusted content has been
   returned, network and capability use always ask);
3. ask the :class:`PermissionPrompt` when the policy says so;
4. run the tool with a :class:`agent.tools.base.ToolContext`;
5. redact through the broker, withhold credentials the vault does not know
   (:mod:`vault.secretscan`; a ``secret_found`` event offers to move each
   into the vault), truncate, audit, and send the result back.

The agent process is untrusted: whatever it writes is validated, and when it
crashes, hangs or writes garbage the host reports ``agent_crashed``, kills it
and stays usable: the next errand starts a fresh worker.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.egress.settings import EgressSettings
from agent.errors import (
    AgentCrashedError,
    AuditWriteError,
    PolicyError,
    ProtocolError,
    SandboxError,
    ToolError,
)
from agent.policy import NET_RULE, Decision, PolicyEngine, Rule, ToolCallRequest, suggest_rule
from agent.ports import BrokerPort, MemoryPort
from agent.protected import request_host_code_reasons
from agent.protocol import (
    MAX_LINE,
    AgentErrorMsg,
    AgentMessage,
    AnyMessage,
    Cancel,
    ErrandLimits,
    ErrandStats,
    FinalAnswer,
    Hello,
    ModelCancel,
    ModelRequest,
    Progress,
    Ready,
    Shutdown,
    Task,
    TokenChunk,
    ToolRequest,
    ToolResult,
    decode,
    encode,
)
from agent.relay import serve_model_request
from agent.sandbox import Sandbox, scrubbed_env, stop_when
from agent.tools.base import ToolContext, ToolOutput, truncate_text
from agent.tools.registry import ALL_TOOLS, run_tool
from memory.errors import MemoryErrorBase
from memory.loader import UNCHECKED
from models.errors import ModelError
from models.factory import ModelSpec
from models.interface import CancelToken, ChatModel, Message
from vault.errors import RedactionError, SecretScanError, VaultError, VaultLockedError
from vault.secretscan import Finding, withhold

if TYPE_CHECKING:
    from agent.egress.proxy import EgressProxy

log = logging.getLogger(__name__)

EventKind = Literal[
    "token",
    "progress",
    "tool_call",
    "decision",
    "tool_result",
    "final",
    "error",
    "agent_crashed",
    "os_isolation",
    "memory_problems",
    "secret_found",
]

DEFAULT_TOOLS: tuple[str, ...] = (
    "list_dir",
    "read_file",
    "search_files",
    "write_file",
    "edit_file",
    "shell",
    "http_request",
    "remember",
    "recall",
    "forget",
)
"""Tools offered to the model when the caller does not choose (those registered)."""

HOST_RESULT_BYTES = 16 * 1024
"""The most content one tool result carries back to the agent."""

STDERR_LINE_BYTES = 4096
"""Longest piece of one agent log line kept (the rest comes as further pieces)."""

WRITE_TIMEOUT_S = 30.0
"""How long a write to the agent may wait for it to read its input."""

CANCEL_GRACE_S = 10.0
"""How long the agent may take to stop after a cancel before it is killed."""

HISTORY_CHARS = 32 * 1024
"""Earlier turns sent with each task: the most recent ones up to this many characters."""


@dataclass(frozen=True)
class AgentEvent:
    """Something the GUI or the terminal shows while an errand runs.

    Attributes:
        kind: What happened.
        text: Streamed text (token), the final answer, or a message (error,
            crash, memory problems: what was left out and what to do).
        tool: The tool concerned (tool_call, decision, tool_result).
        call_id: The call concerned.
        data: Details: arguments, decision action and reason, ok/truncated/
            redacted flags, the isolation state, the memory problems.
    """

    kind: EventKind
    text: str = ""
    tool: str | None = None
    call_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


AgentListener = Callable[[AgentEvent], None]
"""Receives every :class:`AgentEvent`, on the thread that runs the errand."""


class PermissionRequest(BaseModel):
    """What the permission prompt shows the user.

    Attributes:
        tool: The tool the agent wants to run.
        arguments: Its validated arguments.
        effect: What the tool does (read, write, execute, network, ...).
        reason: Why the user is asked (the rule, the default, or the taint).
        tainted: Untrusted content is in the agent's context.
        suggested_rule: The rule "always" would save; the user may edit it.
        unsandboxed: The call would run without the OS sandbox; only "once"
            or "deny" are offered for it.
        runs_code: One line per workspace file the call writes (or a shell
            command names) that the user's own tools execute on the host
            (``.envrc``, ``.vscode/tasks.json``, ``.gitattributes``; see
            :mod:`agent.protected`); shown as "runs code on your machine".
    """

    model_config = ConfigDict(frozen=True)

    tool: str
    arguments: dict[str, Any]
    effect: str
    reason: str
    tainted: bool
    suggested_rule: Rule
    unsandboxed: bool = False
    runs_code: list[str] = Field(default_factory=list)


class PermissionAnswer(BaseModel):
    """The user's answer to a :class:`PermissionRequest`.

    Attributes:
        choice: Allow once, for this session, always (saving ``rule``), or deny.
        rule: The rule to add for "session"/"always" (the suggestion, maybe
            edited); None uses the suggestion.
        reason: For "deny": told to the agent so it can try something else.
    """

    model_config = ConfigDict(frozen=True)

    choice: Literal["once", "session", "always", "deny"]
    rule: Rule | None = None
    reason: str = ""


class PermissionPrompt(Protocol):
    """Asks the user about one tool call (GUI dialog, terminal, scripted in tests)."""

    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        """Return the user's answer; may block until the user decides."""
        ...


class TerminalPrompt:
    """A :class:`PermissionPrompt` on a terminal (the headless ``keyless run``).

    Shows the call, why it is asked, the taint and sandbox warnings, and reads
    one of ``o`` (once), ``s`` (session), ``a`` (always: the suggested rule is
    shown and may be edited, then saved for this workspace or every
    workspace) or ``d`` (deny, with a reason for the agent). End of input
    denies. An unsandboxed shell command offers only once or deny.

    Args:
        stdin: Where answers are read.
        out: Where questions are written.
        allow_reads: Answer "once" without asking for calls whose effect is a
            read (``--yes-read-only``). Deny rules are applied before any
            prompt, so this never overrides them.
    """

    def __init__(self, stdin: IO[str], out: IO[str], *, allow_reads: bool = False) -> None:
        self._in = stdin
        self._out = out
        self._allow_reads = allow_reads

    def ask(self, request: PermissionRequest) -> PermissionAnswer:
        """Ask on the terminal; see the class description."""
        if self._allow_reads and request.effect in ("read", "memory_read"):
            self._say(f"[auto] allowed once: {request.tool} (--yes-read-only)")
            return PermissionAnswer(choice="once", reason="--yes-read-only")
        self._say("")
        self._say(f"Permission needed: {request.tool} ({request.effect})")
        if request.tool == NET_RULE:  # Egress proxy: a sandboxed command's request
            args = request.arguments
            self._say(f"    {args.get('method', '?')} {args.get('host', '?')}"
                      f"{_summary(str(args.get('path', '')), 200)}")
            if args.get("capability"):
                self._say("    carries a capability handle (the proxy swaps in the secret)")
            self._say(f"    asked by: {_summary(str(args.get('command', '?')), 300)}")
        else:
            for name, value in request.arguments.items():
                text = value if isinstance(value, str) else json.dumps(value)
                self._say(f"    {name}: {_summary(text, 300)}")
        self._say(f"  why: {request.reason}")
        if request.tainted:
            self._say("  ! untrusted content (files, web, output) is in the agent's context")
        if request.runs_code:
            self._say("  !! RUNS CODE ON YOUR MACHINE: your own tools would execute what it writes")
            for line in request.runs_code:
                self._say(f"     - {line}")
        if request.unsandboxed:
            self._say("  !! this command would run WITHOUT the sandbox, with your permissions")
            options = "[o]nce or [d]eny"
        else:
            options = f"[o]nce, [s]ession, [a]lways ({request.suggested_rule}), [d]eny"
        while True:
            answer = self._read(f"Allow? {options}: ")
            if answer is None:
                return PermissionAnswer(choice="deny", reason="no answer (end of input)")
            choice = answer.strip().lower()[:1]
            if choice == "o":
                return PermissionAnswer(choice="once")
            if choice == "d":
                reason = self._read("Reason for the agent (optional): ") or ""
                return PermissionAnswer(choice="deny", reason=reason.strip())
            if choice in ("s", "a") and not request.unsandboxed:
                rule = self._edit_rule(request.suggested_rule, always=choice == "a")
                if rule is None:
                    continue
                return PermissionAnswer(choice="session" if choice == "s" else "always", rule=rule)
            self._say(f"Please answer {options}.")

    def _edit_rule(self, suggested: Rule, *, always: bool) -> Rule | None:
        text = self._read(f"Rule [{suggested}] (Enter keeps it): ")
        text = (text or "").strip() or str(suggested)
        scope: Literal["user", "workspace", "session"] = "session"
        if always:
            where = self._read("Save for this [w]orkspace or for [u]ser (every workspace)? ")
            scope = "user" if (where or "").strip().lower().startswith("u") else "workspace"
        try:
            return Rule.parse(text, action="allow", scope=scope)
        except PolicyError as e:
            self._say(f"That rule is refused: {e}")
            return None

    def _read(self, prompt: str) -> str | None:
        self._out.write(terminal_text(prompt))
        self._out.flush()
        line = self._in.readline()
        if not _is_tty(self._in):
            self._out.write("\n")  # the answer was not echoed: end the prompt's line
        return line.rstrip("\n") if line else None

    def _say(self, text: str) -> None:
        self._out.write(terminal_text(text) + "\n")
        self._out.flush()


class RuleSaver(Protocol):
    """Persists "always" rules (agent.policy.RuleStore satisfies it)."""

    def add(self, rule: Rule) -> Any:
        """Save ``rule``."""
        ...


class AuditSink(Protocol):
    """The audit log as the host uses it (vault.audit.AuditLog satisfies it)."""

    def record(
        self,
        kind: str,
        *,
        session_id: str | None = None,
        tool: str | None = None,
        decision: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        secret_values: Sequence[bytes | bytearray | str] = (),
    ) -> Any:
        """Append one entry.

        Raises:
            Exception: Any error when the entry was not written; the host then
                stops the errand rather than act unaudited.
        """
        ...


class HostBroker(BrokerPort, Protocol):
    """What the host needs of vault.broker.Broker: the tools' port plus redaction."""

    def redact(self, text: str, *, session_id: str) -> tuple[str, list[str]]:
        """Remove every secret value from ``text``; return it and the names removed."""
        ...


class HostMemory(MemoryPort, Protocol):
    """What the host needs of memory.service.MemoryService: the tools' port plus loading."""

    def load_context(self) -> Any:
        """The memory to show the agent (an object with ``.text``)."""
        ...


class ToolCallRecord(BaseModel):
    """One tool call of an errand, for the summary."""

    model_config = ConfigDict(frozen=True)

    call_id: str
    tool: str
    arguments: dict[str, Any]
    decision: str
    ok: bool
    summary: str


Outcome = Literal["final", "finish", "cancelled", "max_steps", "max_tokens", "error", "crashed"]


class ErrandResult(BaseModel):
    """How an errand ended."""

    model_config = ConfigDict(frozen=True)

    outcome: Outcome
    text: str
    tool_calls: list[ToolCallRecord]
    stats: ErrandStats | None = None
    error: str | None = None


# --------------------------------------------------------------------------- the process


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
                    raise ProtocolError(
                        f"the agent wrote a line over the {MAX_LINE}-byte limit"
                    )
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


# --------------------------------------------------------------------------- the host


class AgentHost:
    """Runs errands in an agent process and decides every tool call it makes.

    Args:
        model_spec: The model (None with ``scripted_model``). A local
            backend is opened by the agent process; an "openai" backend is
            opened here (the API key never leaves the host) and relayed.
        workspace: The directory the errand works in.
        broker: The vault broker (capabilities, http_request, redaction), or None.
        memory: The memory service, or None.
        policy: The permission rules.
        prompt: Asks the user when the policy says "ask".
        audit: The audit log every decision and result goes to, or None.
        session_id: This session's id (grants and session rules are per session).
        listener: Receives :class:`AgentEvent` s.
        rule_store: Where "always" rules are saved, or None.
        sandbox: The sandbox launcher; detected when None.
        relay_model: The model to serve relayed requests with; when None and
            the spec's backend is remote, opened with models.factory.open_model.
        tools: The tools offered to the model.
        limits: Step and token limits of each errand.
        scripted_model: A JSON file of scripted replies (``--scripted-model``).
        isolate: Run the agent in bubblewrap when available.
        start_timeout: Seconds to wait for Ready (model load).
        idle_timeout: Seconds of silence from the agent before it counts as hung.
        transcript: Called with every line sent to / received from the agent.
        worker_argv: Replace the worker command (tests of crash handling).
        hidden_paths: Paths the agent's sandbox must cover even when inside a
            visible directory (the data dir with the vault).
        cancel_grace: Seconds the agent may take to stop after a cancel
            before it is killed (the errand then ends "cancelled").
        write_timeout: Seconds a write may wait for the agent to read its
            input before it counts as hung.
        egress: Give sandboxed shell commands the network through the
            session's egress proxy (started on the first shell call, stopped
            by :meth:`close`), built with these settings; None: no network.
    """

    def __init__(
        self,
        model_spec: ModelSpec | None,
        *,
        workspace: Path,
        broker: HostBroker | None,
        memory: HostMemory | None,
        policy: PolicyEngine,
        prompt: PermissionPrompt,
        audit: AuditSink | None,
        session_id: str,
        listener: AgentListener | None = None,
        rule_store: RuleSaver | None = None,
        sandbox: Sandbox | None = None,
        relay_model: ChatModel | None = None,
        tools: Sequence[str] | None = None,
        limits: ErrandLimits | None = None,
        scripted_model: Path | None = None,
        isolate: bool = True,
        start_timeout: float = 120.0,
        idle_timeout: float = 300.0,
        transcript: Callable[[str, bytes], None] | None = None,
        worker_argv: Sequence[str] | None = None,
        hidden_paths: Sequence[Path] = (),
        cancel_grace: float = CANCEL_GRACE_S,
        write_timeout: float = WRITE_TIMEOUT_S,
        egress: EgressSettings | None = None,
    ) -> None:
        self._spec = model_spec
        self._hidden = [Path(p) for p in hidden_paths]
        self._cancel_grace = cancel_grace
        self._write_timeout = write_timeout
        self.workspace = Path(workspace).resolve()
        self._broker = broker
        self._memory = memory
        self._policy = policy
        self._prompt = prompt
        self._audit = audit
        self.session_id = session_id
        self._listener = listener
        self._rule_store = rule_store
        self._sandbox = sandbox if sandbox is not None else Sandbox.detect()
        self._relay_model = relay_model
        self._tools = tuple(t for t in (tools or DEFAULT_TOOLS) if t in ALL_TOOLS)
        self._limits = limits or ErrandLimits()
        self._scripted = scripted_model
        self._isolate = isolate
        self._start_timeout = start_timeout
        self._idle_timeout = idle_timeout
        self._transcript = transcript
        self._worker_argv = list(worker_argv) if worker_argv else None
        self._proc: WorkerProcess | None = None
        self._lock = threading.Lock()
        self._cancel = CancelToken()
        self._cancel_deadline: float | None = None
        self._history: list[Message] = []
        self._redaction_failed: RedactionError | None = None
        self.tainted = False
        self.os_isolation = False
        # Egress proxy (begin): one per session, started by the first shell call.
        self._egress_settings = egress
        self._egress: EgressProxy | None = None
        # Egress proxy (end)

    # ----------------------------------------------------------------- lifecycle

    @property
    def worker_pid(self) -> int | None:
        """The running agent process's pid, or None."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Ready:
        """Start the agent process and wait until its model is loaded.

        Raises:
            AgentCrashedError: It did not start, or did not answer Ready in time.
        """
        self._stop_worker()
        try:
            hello, binds = self._hello()
        except ModelError as e:
            self._emit(AgentEvent("error", text=f"cannot prepare the model: {e}"))
            raise AgentCrashedError(f"cannot prepare the model: {e}") from e
        isolated = self._isolate and self._sandbox.available and self._worker_argv is None
        argv = self._worker_argv or self.agent_command(self._default_argv(), binds)
        self.os_isolation = isolated
        self._emit(
            AgentEvent(
                "os_isolation",
                text="on" if isolated else "off",
                data={"isolated": isolated, "reason": self._isolation_reason(isolated)},
            )
        )
        proc = WorkerProcess(
            argv,
            scrubbed_env(),
            transcript=self._transcript,
            write_timeout=self._write_timeout,
            wrapped=isolated,
            on_gone=self._worker_gone,
        )
        self._proc = proc
        try:
            proc.send(hello)
            msg = proc.receive(self._start_timeout)
            if isinstance(msg, AgentErrorMsg):
                raise AgentCrashedError(msg.message)
            if not isinstance(msg, Ready):
                raise ProtocolError(f"expected ready, got {msg.type}")
        except (AgentCrashedError, ProtocolError) as e:
            error = AgentCrashedError(f"the agent process did not start: {e}")
            self._crashed(error)
            raise error from e
        self._record("agent_started", details={"isolated": isolated, "pid": msg.pid})
        return msg

    def agent_command(self, argv: Sequence[str], binds: Sequence[Path] = ()) -> list[str]:
        """Wrap ``argv`` the way the agent process is started.

        In bubblewrap when isolation is on and available (system, Python and
        Keyless read-only; ``binds`` read-only too; the hidden paths covered;
        no network, no home, no workspace), otherwise unchanged. The process
        always gets :func:`agent.sandbox.scrubbed_env`, never the host's.
        """
        if not (self._isolate and self._sandbox.available):
            return list(argv)
        return self._sandbox.agent_command(
            argv, workspace=self.workspace, extra_ro_binds=binds, hide=self._hidden
        )

    def close(self) -> None:
        """Stop the agent process (politely, then by force), the egress proxy, the relayed model."""
        self._stop_worker()
        self._close_egress()  # Egress proxy
        if self._relay_model is not None:
            self._relay_model.close()

    def cancel(self) -> None:
        """Cancel the running errand (from any thread; never blocks).

        The errand's thread tells the agent (one Cancel message), stops a
        relayed generation, refuses a tool call not yet run, and kills the
        agent if it has not stopped ``cancel_grace`` seconds later.
        """
        self._cancel.cancel()

    def redact(self, text: str) -> str:
        """``text`` as the user may be shown it: every secret the broker knows replaced.

        For everything a terminal or a log shows of an errand (tool arguments,
        summaries), through the same redactor as the results the agent gets.
        When redaction cannot run (the vault locked with grants in the
        session) the text is withheld, not shown unchecked.
        """
        try:
            return self._redact(text)[0]
        except RedactionError:
            return "[withheld: it could not be checked for secrets]"

    def clear_taint(self) -> None:
        """The user cleared the untrusted content: network use follows the rules again."""
        self.tainted = False
        self._record("taint_cleared")

    # ----------------------------------------------------------------- errands

    def run_errand(self, task: str) -> ErrandResult:
        """Run one errand to its end.

        A crash, hang or garbage from the agent process ends the errand with
        outcome "crashed" (and an ``agent_crashed`` event); the host stays
        usable and the next errand starts a fresh agent process.
        """
        with self._lock:
            self._cancel = CancelToken()
            self._cancel_deadline = None
            self._redaction_failed = None
            calls: list[ToolCallRecord] = []
            try:
                # Before anything reaches the agent: an errand whose results
                # cannot be redacted (grants, vault locked) is refused at once.
                shown_task = self._redact(task)[0]
            except RedactionError as e:
                return self._unredactable(e, calls)
            try:
                if self._proc is None:
                    self.start()
                proc = self._proc
                assert proc is not None
                proc.send(self._task(task))
                self._record("errand_started", details={"task": shown_task})
                return self._loop(proc, task, calls)
            except AuditWriteError as e:
                return self._audit_failed(e, calls)
            except (AgentCrashedError, ProtocolError) as e:
                if self._proc is not None:  # start() already reported its own failure
                    self._crashed(e)
                return ErrandResult(outcome="crashed", text="", tool_calls=calls, error=str(e))

    def _unredactable(self, error: RedactionError, calls: list[ToolCallRecord]) -> ErrandResult:
        """End the errand because redaction failed; say what to do."""
        message = _redaction_message(error)
        self._emit(AgentEvent("error", text=message, data={"kind": "redaction"}))
        self._record("errand_failed", reason=message)
        return ErrandResult(outcome="error", text="", tool_calls=calls, error=message)

    def _next(self, proc: WorkerProcess) -> AgentMessage | None:
        """The agent's next message; None when it ignored a cancel for too long.

        Raises:
            AgentCrashedError: It exited, or said nothing for ``idle_timeout``.
            ProtocolError: It wrote something malformed.
        """
        deadline = time.monotonic() + self._idle_timeout
        while True:
            now = time.monotonic()
            # The grace runs from the first time the cancel is seen in this errand,
            # so an agent that keeps streaming instead of stopping is still killed.
            if self._cancel.cancelled and self._cancel_deadline is None:
                self._cancel_deadline = now + self._cancel_grace
                proc.send(Cancel())
            cancel_deadline = self._cancel_deadline
            if cancel_deadline is not None and now >= cancel_deadline:
                return None
            if now >= deadline:
                raise AgentCrashedError(
                    f"the agent process sent nothing for {self._idle_timeout:g} s"
                )
            # Wake up now and then to notice a cancel that came from another thread.
            msg = proc.poll(min(deadline, cancel_deadline or deadline, now + 0.25) - now)
            if msg is not None:
                return msg

    def _loop(self, proc: WorkerProcess, task: str, calls: list[ToolCallRecord]) -> ErrandResult:
        while True:
            msg = self._next(proc)
            if msg is None:
                self._stop_worker(kill=True)
                reason = f"the agent did not stop within {self._cancel_grace:g} s of the cancel"
                self._record("agent_killed", reason=reason)
                if self._redaction_failed is not None:
                    self._unredactable(self._redaction_failed, calls)
                return ErrandResult(outcome="cancelled", text="", tool_calls=calls, error=reason)
            if isinstance(msg, TokenChunk):
                self._emit(AgentEvent("token", text=msg.text, data={"step": msg.step}))
            elif isinstance(msg, Progress):
                data: dict[str, Any] = {"step": msg.step, "max_steps": msg.max_steps}
                if msg.context is not None:
                    data["context"] = msg.context.model_dump()
                self._emit(AgentEvent("progress", data=data))
            elif isinstance(msg, ToolRequest):
                try:
                    result, record = self._handle_tool(msg)
                except RedactionError as e:
                    # Nothing unredacted goes back: the call is refused, the agent
                    # is told to stop, and the errand ends once it has stopped,
                    # so the same agent process runs the next errand.
                    self._redaction_failed = e
                    self._cancel.cancel()
                    text = "the result was withheld: it could not be checked for secrets"
                    result, record = self._refuse(msg, "withheld", text, audited=True)
                calls.append(record)
                proc.send(result)
            elif isinstance(msg, ModelRequest):
                self._serve_model(proc, msg)
            elif isinstance(msg, ModelCancel):
                log.debug("agent gave up relayed generation %s", msg.request_id)
            elif isinstance(msg, FinalAnswer):
                if self._redaction_failed is not None:
                    return self._unredactable(self._redaction_failed, calls)
                try:
                    text = self._redact(msg.text)[0]
                except RedactionError as e:
                    return self._unredactable(e, calls)
                self._history += [
                    Message(role="user", content=task),
                    Message(role="assistant", content=text),
                ]
                final_data: dict[str, Any] = msg.stats.model_dump()
                if msg.context is not None:
                    final_data["context"] = msg.context.model_dump()
                self._emit(AgentEvent("final", text=text, data=final_data))
                self._record(
                    "errand_finished",
                    reason=msg.stats.stop_reason,
                    details={"text": self._redact(text)[0], **msg.stats.model_dump()},
                )
                return ErrandResult(
                    outcome=msg.stats.stop_reason, text=text, tool_calls=calls, stats=msg.stats
                )
            elif isinstance(msg, AgentErrorMsg):
                if msg.kind == "protocol":
                    # The two sides disagree about the conversation: start afresh.
                    raise ProtocolError(f"the agent refused a message: {msg.message}")
                self._emit(AgentEvent("error", text=msg.message, data={"kind": msg.kind}))
                self._record("errand_failed", reason=msg.message)
                return ErrandResult(outcome="error", text="", tool_calls=calls, error=msg.message)
            elif isinstance(msg, Ready):
                raise ProtocolError("the agent sent ready in the middle of an errand")

    # ----------------------------------------------------------------- tools

    def _handle_tool(self, req: ToolRequest) -> tuple[ToolResult, ToolCallRecord]:
        args_text = self._redact(json.dumps(req.arguments, sort_keys=True))[0]
        self._emit(
            AgentEvent(
                "tool_call", tool=req.tool, call_id=req.call_id, data={"arguments": args_text}
            )
        )
        spec = ALL_TOOLS.get(req.tool)
        if spec is None or req.tool not in self._tools:
            return self._refuse(req, "invalid", f"no tool named {req.tool!r} is available")
        try:
            args = spec.args_model.model_validate(req.arguments)
        except ValidationError as e:
            return self._refuse(req, "invalid", _validation_message(req.tool, e))
        arguments = args.model_dump(mode="json", exclude_defaults=True)
        call = ToolCallRequest(
            tool=req.tool,
            arguments=req.arguments,
            workspace=self.workspace,
            sandbox_available=self._sandbox.available,
        )
        decision = self._policy.decide(call, tainted=self.tainted)
        if decision.action == "deny":
            self._decided(req, "deny", decision.reason, by="policy")
            return self._refuse(req, "denied", f"denied: {decision.reason}", audited=True)
        if decision.action == "ask":
            answer = self._ask(call, spec.effect, decision, arguments)
            # The agent may have died while the user was asked: nothing runs for it.
            self._check_agent()
            if answer.choice == "deny":
                reason = answer.reason or "the user denied this call"
                self._decided(req, "deny", reason, by="user", choice="deny")
                return self._refuse(req, "denied", f"denied by the user: {reason}", audited=True)
            reason = f"allowed by the user ({answer.choice})"
            self._decided(
                req, "allow", reason, by="user", choice=answer.choice,
                unsandboxed=decision.unsandboxed,
            )
        else:
            self._decided(
                req, "allow", decision.reason, by="policy", unsandboxed=decision.unsandboxed
            )
        if self._cancel.cancelled:
            return self._refuse(req, "cancelled", "the errand was cancelled", audited=True)
        output, ok = self._run(req, unsandboxed_approved=decision.unsandboxed)
        self._check_agent()  # a command stopped because the agent died is not delivered
        return self._deliver(req, output, ok)

    def _ask(
        self,
        call: ToolCallRequest,
        effect: str,
        decision: Decision,
        arguments: dict[str, Any],
    ) -> PermissionAnswer:
        suggested = suggest_rule(call)
        request = PermissionRequest(
            tool=call.tool,
            arguments=arguments,
            effect=effect,
            reason=decision.reason,
            tainted=self.tainted,
            suggested_rule=suggested,
            unsandboxed=decision.unsandboxed,
            runs_code=request_host_code_reasons(call.tool, arguments),
        )
        answer = self._prompt.ask(request)
        if decision.unsandboxed and answer.choice in ("session", "always"):
            # An unsandboxed run is approved one call at a time, never by a rule.
            answer = PermissionAnswer(choice="once", reason=answer.reason)
        if answer.choice in ("session", "always"):
            rule = (answer.rule or suggested).model_copy(update={"action": "allow"})
            if answer.choice == "session":
                rule = rule.model_copy(update={"scope": "session"})
            elif rule.scope == "session":
                rule = rule.model_copy(update={"scope": "workspace"})
            self._policy.add_rule(rule)
            if answer.choice == "always" and self._rule_store is not None:
                try:
                    self._rule_store.add(rule)
                except PolicyError as e:
                    # It still holds for this session; the user hears why it was not saved.
                    self._emit(AgentEvent("error", text=f"the rule {rule} was not saved: {e}"))
            self._record(
                "rule_added",
                tool=call.tool,
                decision="allow",
                reason=answer.choice,
                details={"rule": str(rule), "scope": rule.scope},
            )
        return answer

    def _run(self, req: ToolRequest, unsandboxed_approved: bool) -> tuple[ToolOutput, bool]:
        ctx = ToolContext(
            workspace=self.workspace,
            session_id=self.session_id,
            sandbox=self._sandbox,
            broker=self._broker,
            memory=self._memory,
            unsandboxed_approved=unsandboxed_approved,
            hidden_paths=tuple(self._hidden),
            tainted=self.tainted,
            may_read=self._policy.read_filter(),
            egress=self._egress_for(req.tool),  # Egress proxy
        )
        proc = self._proc
        try:
            # A command still running when the agent dies is killed at once.
            with stop_when(proc.gone if proc is not None else threading.Event()):
                return run_tool(req.tool, req.arguments, ctx), True
        except (ToolError, SandboxError, VaultError, MemoryErrorBase) as e:
            # The message names the problem for the model (path refused, connection
            # failed, secret in memory, ...); none of these messages carries a secret.
            log.info("%s failed: %s", req.tool, e)
            # A network tool's error may quote the server (a redirect target, a
            # protocol error): that is outside data, like a response body.
            untrusted = ALL_TOOLS[req.tool].effect == "network"
            return ToolOutput(content=f"error: {e}", untrusted=untrusted), False

    def _deliver(
        self, req: ToolRequest, output: ToolOutput, ok: bool
    ) -> tuple[ToolResult, ToolCallRecord]:
        content, names = self._redact(output.content)
        redacted = sorted(set(output.redacted) | set(names))
        content, found = self._withhold(req, content)
        content, cut = truncate_text(content, HOST_RESULT_BYTES, what="tool result")
        result = ToolResult(
            call_id=req.call_id,
            ok=ok,
            content=content,
            truncated=output.truncated or cut,
            redacted=redacted,
            untrusted=output.untrusted,
        )
        if result.untrusted:
            self.tainted = True
        self._record(
            "tool_result",
            tool=req.tool,
            decision="allow",
            details={
                "call_id": req.call_id,
                "ok": ok,
                "bytes": len(content.encode()),
                "truncated": result.truncated,
                "redacted": redacted,
                "withheld": [f.describe() for f in found],
                "untrusted": result.untrusted,
            },
            secret_values=[f.value for f in found],
        )
        for f in found:
            # The value travels only in the offer object, never in the text.
            self._emit(
                AgentEvent(
                    "secret_found",
                    text=f"{f.kind} at {f.location}",
                    tool=req.tool,
                    call_id=req.call_id,
                    data={**f.describe(), "offer": f},
                )
            )
        self._emit_result(req, result)
        return result, ToolCallRecord(
            call_id=req.call_id,
            tool=req.tool,
            arguments=req.arguments,
            decision="allow",
            ok=ok,
            summary=_summary(content),
        )

    def _withhold(self, req: ToolRequest, content: str) -> tuple[str, list[Finding]]:
        """``content`` with credentials the vault does not know withheld (fails closed)."""
        source, first_line = _scan_source(req)
        try:
            return withhold(content, source=source, first_line=first_line)
        except SecretScanError as e:
            log.warning("%s result withheld: %s", req.tool, e)
            return f"[WITHHELD: the result could not be checked for credentials: {e}]", []

    def _refuse(
        self, req: ToolRequest, decision: str, message: str, *, audited: bool = False
    ) -> tuple[ToolResult, ToolCallRecord]:
        if not audited:
            self._decided(req, decision, message, by="host")
        result = ToolResult(call_id=req.call_id, ok=False, content=message, untrusted=False)
        self._emit_result(req, result)
        return result, ToolCallRecord(
            call_id=req.call_id,
            tool=req.tool,
            arguments=req.arguments,
            decision=decision,
            ok=False,
            summary=_summary(message),
        )

    def _decided(
        self,
        req: ToolRequest,
        action: str,
        reason: str,
        *,
        by: str,
        unsandboxed: bool = False,
        **extra: str,
    ) -> None:
        self._emit(
            AgentEvent(
                "decision",
                tool=req.tool,
                call_id=req.call_id,
                text=action,
                data={"action": action, "reason": reason, "by": by, **extra},
            )
        )
        self._record(
            "tool_decision",
            tool=req.tool,
            decision=action,
            reason=reason,
            details={
                "call_id": req.call_id,
                "by": by,
                "arguments": self._redact(json.dumps(req.arguments, sort_keys=True))[0],
                "tainted": self.tainted,
                # An approved run without the OS sandbox says so in its entry.
                **({"sandboxed": False} if unsandboxed else {}),
                **extra,
            },
        )

    # ----------------------------------------------------------------- egress proxy (begin)

    def _egress_for(self, tool: str) -> EgressProxy | None:
        """The session's egress proxy for a sandboxed ``shell`` call, started on first use.

        Raises:
            SandboxError: The proxy did not start (the call fails with the reason).
        """
        settings = self._egress_settings
        if settings is None or tool != "shell" or not self._sandbox.available:
            return None
        if self._egress is None:
            from agent.egress.hooks import PolicyEgressHooks  # noqa: PLC0415 (mitmproxy on demand)
            from agent.egress.proxy import EgressProxy  # noqa: PLC0415

            hooks = PolicyEgressHooks(
                self._policy, ask=self._ask_net, record=self._record, tainted=lambda: self.tainted
            )
            # The broker redeems handles and redacts; one without those methods
            # (a test double) means no capability can be used through the proxy.
            broker = self._broker if hasattr(self._broker, "redeem_egress") else None
            proxy = EgressProxy(
                hooks,
                broker,  # type: ignore[arg-type]  # checked just above
                session_id=self.session_id,
                pinned_hosts=settings.pinned_hosts,
                local_hosts=settings.local_hosts,
                upstream_ca=settings.upstream_ca,
                resolver=settings.resolver,
            )
            proxy.start()
            self._egress = proxy
            self._record("egress_started", details={"pinned": list(settings.pinned_hosts)})
        return self._egress

    def _ask_net(self, call: ToolCallRequest, decision: Decision) -> bool:
        """Ask the user about one proxied request (on a proxy thread), as a ``net`` call.

        "Session" and "always" add the suggested ``net(host)`` rule, as for a
        tool call. A cancelled errand asks nothing and refuses.
        """
        if self._cancel.cancelled:
            return False
        answer = self._ask(call, "network", decision, dict(call.arguments))
        return answer.choice != "deny"

    def _close_egress(self) -> None:
        proxy, self._egress = self._egress, None
        if proxy is not None:
            proxy.close()

    # ----------------------------------------------------------------- egress proxy (end)

    def _emit_result(self, req: ToolRequest, result: ToolResult) -> None:
        self._emit(
            AgentEvent(
                "tool_result",
                tool=req.tool,
                call_id=req.call_id,
                text=result.content,
                data={
                    "ok": result.ok,
                    "truncated": result.truncated,
                    "redacted": list(result.redacted),
                    "untrusted": result.untrusted,
                },
            )
        )

    # ----------------------------------------------------------------- model relay

    def _serve_model(self, proc: WorkerProcess, req: ModelRequest) -> None:
        model = self._relay()
        if model is None:
            from agent.protocol import ModelFailed

            proc.send(ModelFailed(request_id=req.request_id, message="the host relays no model"))
            return
        serve_model_request(model, req, self._relay_sender(proc), self._cancel)

    def _relay_sender(self, proc: WorkerProcess) -> Callable[[AnyMessage], None]:
        """``proc.send``, withholding a relayed error that quotes a vault secret.

        A remote server's error text (a 401 page, say) may echo the API key
        the host sent; the key need not be granted to this session, so the
        whole vault is scanned, not just the session's redaction set.
        """
        from agent.protocol import ModelFailed

        def send(msg: AnyMessage) -> None:
            if isinstance(msg, ModelFailed):
                msg = msg.model_copy(update={"message": self._relay_error_text(msg.message)})
            proc.send(msg)

        return send

    def _relay_error_text(self, text: str) -> str:
        withheld = "the remote model failed; its error message quoted a secret and is withheld"
        scan = getattr(self._broker, "scan", None)
        if scan is not None:
            try:
                found = scan(text)
            except VaultError:  # cannot check (vault locked): fail closed
                return "the remote model failed; its error message could not be checked"
            if found:
                self._record("relay_error_withheld", details={"secrets": list(found)})
                return withheld
        return self._redact(text)[0]

    def _relay(self) -> ChatModel | None:
        if self._relay_model is None and self._spec is not None and _is_remote(self._spec):
            from models.factory import open_model

            self._relay_model = open_model(self._spec)
        return self._relay_model

    # ----------------------------------------------------------------- helpers

    def _default_argv(self) -> list[str]:
        # -I: ignore PYTHON* variables and never put the working directory on sys.path.
        if getattr(sys, "frozen", False):
            # A PyInstaller bundle has no `python -m`: its entry point
            # (packaging/entry.py) dispatches on this flag instead.
            argv = [sys.executable, "--agent-worker"]
        else:
            argv = [sys.executable, "-I", "-m", "agent.worker"]
        if self._scripted is not None:
            argv += ["--scripted-model", str(self._scripted)]
        return argv

    def _hello(self) -> tuple[Hello, list[Path]]:
        """The Hello for the worker, and the files it must be able to read."""
        if self._scripted is not None:
            return Hello(), [self._scripted]
        if self._spec is None and self._worker_argv is not None:
            return Hello(), []  # a custom worker brings its own model
        if self._relay_model is not None or _is_remote(self._spec):
            model = self._relay()
            assert model is not None
            return Hello(relayed_model=model.info), []
        if self._spec is None:
            raise ModelError("no model was chosen")
        spec = self._spec
        if spec.backend == "llama.cpp" and spec.path is None:
            # Verify the embedded model here, where the digest cache is writable,
            # and send the agent a plain path: it cannot see the data dir.
            from models.catalog import embedded_default, verify

            checked = verify(embedded_default(), cache_file=spec.verified_cache)
            spec = spec.model_copy(update={"path": checked.path, "verified_cache": None})
        binds = [p for p in (spec.path, spec.scripted_file) if p is not None]
        return Hello(model_spec=spec), [Path(p) for p in binds]

    def _task(self, task: str) -> Task:
        memory_text = ""
        if self._memory is not None:
            try:
                context = self._memory.load_context()
                memory_text = str(context.text)
                self._memory_problems([str(p) for p in getattr(context, "problems", ())])
            except MemoryErrorBase as e:
                self._emit(AgentEvent("error", text=f"memory was not loaded: {e}"))
                self._record("memory_not_loaded", reason=str(e))
        caps: list[Any] = []
        if self._broker is not None:
            try:
                caps = list(self._broker.capabilities(self.session_id))
            except VaultError as e:  # e.g. the vault locked itself: no handles this time
                self._emit(AgentEvent("error", text=f"no capabilities offered: {e}"))
                self._record("capabilities_unavailable", reason=str(e))
        return Task(
            task=task,
            memory_context=memory_text,
            capabilities=caps,
            history=recent_turns(self._history, HISTORY_CHARS),
            tools=list(self._tools),
            limits=self._limits,
        )

    def _memory_problems(self, problems: list[str]) -> None:
        """Tell the user which memory was left out of the prompt, and what to do."""
        if not problems:
            return
        unchecked = [p for p in problems if UNCHECKED in p]
        lines = []
        if unchecked:
            lines.append(
                f"{len(unchecked)} memory file(s) were withheld from the agent: they could "
                "not be checked for vault secrets (the vault is locked). Unlock the vault "
                "to give the agent its memory."
            )
        lines += [f"memory: {p}" for p in problems if UNCHECKED not in p]
        text = "\n".join(lines)
        self._emit(AgentEvent("memory_problems", text=text, data={"problems": problems}))
        self._record("memory_problems", details={"problems": problems})

    def _isolation_reason(self, isolated: bool) -> str:
        if isolated:
            return "the agent runs in bubblewrap: no network, no home directory, no vault"
        if not self._isolate:
            return "OS isolation was turned off"
        if self._worker_argv is not None:
            return "a custom agent command runs without the sandbox"
        return "bubblewrap is not available: the agent runs as a plain process"

    def _redact(self, text: str) -> tuple[str, list[str]]:
        if self._broker is None:
            return text, []
        return self._broker.redact(text, session_id=self.session_id)

    def _emit(self, event: AgentEvent) -> None:
        if self._listener is not None:
            self._listener(event)

    def _record(self, kind: str, **kwargs: Any) -> None:
        """Append an audit entry; fail closed.

        Raises:
            AuditWriteError: The entry was not written (disk full, database
                locked or corrupt): what it would record must not happen.
        """
        if self._audit is None:
            return
        try:
            self._audit.record(kind, session_id=self.session_id, **kwargs)
        except Exception as e:  # any failure of the sink means "not recorded"
            raise AuditWriteError(
                f"the audit log cannot be written ({e}); the errand stopped so that "
                "nothing runs unaudited"
            ) from e

    def _audit_failed(self, error: AuditWriteError, calls: list[ToolCallRecord]) -> ErrandResult:
        # The agent waits for an answer that will not come: stop it, and start
        # afresh next errand.
        self._stop_worker(kill=True)
        log.error("%s", error)
        self._emit(AgentEvent("error", text=str(error), data={"kind": "audit"}))
        return ErrandResult(outcome="error", text="", tool_calls=calls, error=str(error))

    def _check_agent(self) -> None:
        """Raise when the agent process died during a tool call or a prompt.

        Raises:
            AgentCrashedError: It is gone; the message says how (the signal, the status).
        """
        proc = self._proc
        if proc is not None and proc.gone.is_set():
            raise AgentCrashedError(proc.exit_reason())

    def _worker_gone(self, proc: WorkerProcess) -> None:
        """The agent process died (watcher thread): withdraw a prompt asked for it.

        A prompt that supports it (``withdraw(reason)``) answers its pending
        question "deny" and closes it; the errand's thread then finds the
        agent gone and reports the crash once.
        """
        if proc is not self._proc:
            return  # an old worker, stopped on purpose
        withdraw = getattr(self._prompt, "withdraw", None)
        if callable(withdraw):
            withdraw("the agent process is gone")

    def _crashed(self, error: BaseException) -> None:
        proc, self._proc = self._proc, None
        tail = ""
        if proc is not None:
            proc.kill()
            tail = "\n".join(list(proc.stderr_tail)[-10:])
        log.warning("agent process failed: %s", error)
        self._emit(AgentEvent("agent_crashed", text=str(error), data={"stderr": tail}))
        self._record("agent_crashed", reason=str(error))

    def _stop_worker(self, *, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
            return
        try:
            proc.send(Shutdown())
        except AgentCrashedError:
            log.debug("agent already gone at shutdown")
        proc.stop()


def _scan_source(req: ToolRequest) -> tuple[str, int]:
    """What a withheld-credential stub names for ``req``'s result, and its first line."""
    args = req.arguments
    if req.tool == "read_file":
        start = args.get("start_line", 1)
        return str(args.get("path", "the file")), start if isinstance(start, int) else 1
    if req.tool == "shell":
        return "the command's output", 1
    if req.tool == "http_request":
        return "the HTTP response", 1
    return f"the {req.tool} result", 1


def _is_remote(spec: ModelSpec | None) -> bool:
    return spec is not None and spec.backend == "openai"


def _redaction_message(error: RedactionError) -> str:
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, VaultLockedError):
        cause = cause.__cause__
    if cause is not None:
        return (
            "unlock the vault to run with capabilities: this session has capabilities, "
            "and while the vault is locked their secrets cannot be kept out of what the "
            "agent sees"
        )
    return f"the errand was stopped: {error}"


def _validation_message(tool: str, e: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}"
        for err in e.errors()[:5]
    )
    return f"invalid arguments for {tool}: {problems}"


def recent_turns(history: Sequence[Message], max_chars: int) -> list[Message]:
    """The latest whole user/assistant pairs of ``history`` within ``max_chars``."""
    kept: list[Message] = []
    size = 0
    for i in range(len(history) - 2, -1, -2):
        pair = list(history[i : i + 2])
        size += sum(len(m.content) for m in pair)
        if size > max_chars:
            break
        kept[:0] = pair
    return kept


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def terminal_text(text: str) -> str:
    r"""``text`` with control and format characters shown as escapes (``ESC`` as ``\x1b``).

    Model and tool text written to a terminal must not drive it: an escape
    sequence could erase or rewrite the permission prompt, hide a command
    (also with bidi overrides) or set the clipboard (OSC 52). Newlines and
    tabs stay.
    """
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch)[0] != "C":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _summary(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def new_session_id() -> str:
    """Return a fresh session id."""
    return uuid.uuid4().hex


__all__ = [
    "AgentEvent",
    "AgentHost",
    "AgentListener",
    "ErrandResult",
    "PermissionAnswer",
    "PermissionPrompt",
    "PermissionRequest",
    "TerminalPrompt",
    "ToolCallRecord",
    "WorkerProcess",
    "new_session_id",
    "terminal_text",
    "recent_turns",
]
