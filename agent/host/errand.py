"""The trusted side of an errand: start the agent process, decide and run its tool calls.

:class:`AgentHost` starts ``python -m agent.worker`` (inside bubblewrap when the
sandbox can, otherwise as a plain subprocess with a scrubbed environment, and
says which to its listener), sends it the task with the memory context and the
session's capability handles, and answers each tool request:

1. validate the arguments (a bad call goes back to the model as an error);
2. ask the policy (deny > ask > allow; once untrusted content has been
   returned, network and capability use always ask);
3. ask the :class:`PermissionPrompt` when the policy says so;
4. run the tool with a :class:`agent.host.tools.base.ToolContext`;
5. redact through the broker, withhold credentials the vault does not know
   (:mod:`vault.secretscan`; a ``secret_found`` event offers to move each
   into the vault), truncate, audit, and send the result back.

The agent process is untrusted: whatever it writes is validated, and when it
crashes, hangs or writes garbage the host reports ``agent_crashed``, kills it
and stays usable: the next errand starts a fresh worker.

Why about 600 lines: :class:`AgentHost` is the errand's state machine (start,
task, the message loop, cancel and crash handling); the parts that stand on
their own are in :mod:`agent.host.supervisor`, :mod:`agent.host.dispatch`,
:mod:`agent.host.delivery` and :mod:`agent.host.relay`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.errors import (
    AgentCrashedError,
    AuditWriteError,
    ProtocolError,
)
from agent.host.delivery import redaction_message
from agent.host.dispatch import ToolDispatch
from agent.host.egress.settings import EgressSettings
from agent.host.events import AgentEvent, AgentListener, ErrandResult, ToolCallRecord
from agent.host.kvsession import SavedStates
from agent.host.mcpserver.hub import McpHub
from agent.host.permission import PermissionPrompt, RuleSaver
from agent.host.policy import PolicyEngine
from agent.host.ports import AuditSink, HostBroker, HostMemory
from agent.host.relay import ModelRelay, is_remote
from agent.host.sandbox import Sandbox, scrubbed_env
from agent.host.supervisor import WRITE_TIMEOUT_S, WorkerProcess
from agent.host.tools.registry import ALL_TOOLS, default_tools, offers
from agent.protocol import (
    AgentErrorMsg,
    AgentMessage,
    Cancel,
    ErrandLimits,
    FinalAnswer,
    Hello,
    ModelCancel,
    ModelRequest,
    Progress,
    Ready,
    Resample,
    Shutdown,
    Task,
    TokenChunk,
    ToolOffer,
    ToolRequest,
)
from memory.errors import MemoryErrorBase
from memory.loader import UNCHECKED
from models.backends import backend_for, runs_in_host, source_arguments, source_for
from models.errors import ModelError
from models.factory import ModelSpec
from models.interface import CancelToken, ChatModel, Message
from models.kvstate import ModelHashes, StateStore
from vault.errors import RedactionError, VaultError, VaultLockedError

log = logging.getLogger(__name__)


CANCEL_GRACE_S = 10.0
"""How long the agent may take to stop after a cancel before it is killed."""

HISTORY_CHARS = 32 * 1024
"""Earlier turns sent with each task: the most recent ones up to this many characters."""


# --------------------------------------------------------------------------- the host


class AgentHost(ToolDispatch, ModelRelay, SavedStates):
    """Runs errands in an agent process and decides every tool call it makes.

    Args:
        model_spec: The model (None with ``scripted_model``). A local
            backend is opened by the agent process; a backend that runs in the
            host (``openai``: the API key never leaves the host) is opened
            here and relayed.
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
        tools: The tools offered to the model (``finish`` always is); by
            default every registered tool (:func:`agent.host.tools.registry.default_tools`).
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
        mcp: The MCP servers whose approved tools are offered too (started,
            or restarted when down, at each errand), or None.
        egress: Give sandboxed shell commands the network through the
            session's egress proxy (started on the first shell call, stopped
            by :meth:`close`), built with these settings; None: no network.
        kv_store: Where the session's KV state is saved when the host closes
            and restored when a session is reopened (see
            :mod:`agent.host.kvsession`), or None.
        model_hashes: The model files' remembered sha256s (binds saved states).
        confidence_floor: A write, command, network or capability call whose
            confidence is below this asks even where a rule allows it; None
            never asks for that reason.
        scaffold: Whether the agent uses the small-model step scaffold (see
            :mod:`agent.worker.scaffold`); None lets it decide by the model.
        resample: Sample a tool call whose confidence is below its floor
            again (at temperature, a few tries, the surest kept), in the
            agent process; None never does.
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
        mcp: McpHub | None = None,
        egress: EgressSettings | None = None,
        kv_store: StateStore | None = None,
        model_hashes: ModelHashes | None = None,
        confidence_floor: float | None = None,
        scaffold: bool | None = None,
        resample: Resample | None = None,
    ) -> None:
        self._mcp = mcp
        self._spec = model_spec
        self._hidden = [Path(p) for p in hidden_paths]
        self._cancel_grace = cancel_grace
        self._write_timeout = write_timeout
        self.workspace = Path(workspace).resolve()
        self._broker = broker
        self._memory = memory
        self._policy = policy
        self._confidence_floor = confidence_floor
        self._scaffold = scaffold
        self._resample = resample
        self._prompt = prompt
        self._audit = audit
        self.session_id = session_id
        self._listener = listener
        self._rule_store = rule_store
        self._sandbox = sandbox if sandbox is not None else Sandbox.detect()
        self._relay_model = relay_model
        self._tools = tuple(t for t in (tools or default_tools()) if t in ALL_TOOLS)
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
        # The agent process continues the conversation of this id; a new id
        # (history replaced, a fresh worker) makes it start from _history.
        self._conversation = uuid.uuid4().hex
        self._kv_store = kv_store
        self._model_hashes = model_hashes
        self._model_path: Path | None = None
        # A session's saved state is tried once, before its first errand here.
        self._restore_pending = kv_store is not None
        self._redaction_failed: RedactionError | None = None
        self.tainted = False
        self.os_isolation = False
        # Egress proxy (begin): one per session, started by the first shell call.
        self._egress_settings = egress
        self._egress = None
        self._egress_call = None
        # Egress proxy (end)
        if mcp is not None:
            mcp.use_network(self._mcp_network())

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
        if msg.model is not None:
            self._emit(AgentEvent("model_loaded", text=msg.model.name, data=msg.model.model_dump()))
        self._model_path = Path(msg.model.path) if msg.model and msg.model.path else None
        return msg

    def agent_command(self, argv: Sequence[str], binds: Sequence[Path] = ()) -> list[str]:
        """Wrap ``argv`` the way the agent process is started.

        In bubblewrap when isolation is on and available (system, Python and
        Keyless read-only; ``binds`` read-only too; the hidden paths covered;
        no network, no home, no workspace), otherwise unchanged. The process
        always gets :func:`agent.host.sandbox.scrubbed_env`, never the host's.
        """
        if not (self._isolate and self._sandbox.available):
            return list(argv)
        writable = []
        state_dir = self.state_dir()
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            writable.append(state_dir)
        return self._sandbox.agent_command(
            argv, workspace=self.workspace, extra_ro_binds=binds, hide=self._hidden,
            extra_rw_binds=writable,
        )

    def close(self) -> None:
        """Save the session's KV state, then stop the agent process, egress proxy, relay and MCP.

        The state is saved only when no errand runs (a close from another
        thread during one skips it) and a store was given.
        """
        if self._proc is not None and self._kv_store is not None:
            if self._lock.acquire(blocking=False):
                try:
                    self.save_state()
                except AuditWriteError as e:
                    log.warning("KV state saved but not audited: %s", e)
                finally:
                    self._lock.release()
        self._stop_worker()
        self._close_egress()  # Egress proxy
        if self._mcp is not None:
            self._mcp.close()
        if self._relay_model is not None:
            self._relay_model.close()

    def cancel(self) -> None:
        """Cancel the running errand (from any thread; never blocks).

        The errand's thread tells the agent (one Cancel message), stops a
        relayed generation, refuses a tool call not yet run, and kills the
        agent if it has not stopped ``cancel_grace`` seconds later.
        """
        self._cancel.cancel()

    @property
    def history(self) -> list[Message]:
        """The session's earlier turns (user task, answer) this host knows."""
        return list(self._history)

    def replace_history(self, history: Sequence[Message]) -> None:
        """Make ``history`` the session's earlier turns (a session resumed from the store).

        When they differ from the turns the host has, the next errand restores
        the session's saved KV state (when there is a usable one) or starts a
        new conversation in the agent process, seeded with the latest of these
        turns; the host's own turns keep the agent's conversation going.
        """
        turns = [m for m in history if m.role in ("user", "assistant")]
        if turns == self._history:
            return  # the host's own turns: the agent's conversation goes on
        self._history = turns
        self._conversation = uuid.uuid4().hex
        self._restore_pending = self._kv_store is not None

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
                # Before anything reaches the agent: an errand whose capabilities
                # cannot be redeemed (grants, vault locked) or whose results
                # cannot be redacted is refused at once.
                if self._broker is not None:
                    self._check_capabilities()
                shown_task = self._redact(task)[0]
            except RedactionError as e:
                return self._unredactable(e, calls)
            try:
                if self._proc is None:
                    self.start()
                if self._restore_pending:
                    self.restore_state()
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

    def _check_capabilities(self) -> None:
        """Raise RedactionError (caused by VaultLockedError) when grants cannot be used."""
        assert self._broker is not None
        try:
            self._broker.check_capabilities_usable(self.session_id)
        except VaultLockedError as e:
            raise RedactionError("the session's capabilities need the vault unlocked") from e

    def _unredactable(self, error: RedactionError, calls: list[ToolCallRecord]) -> ErrandResult:
        """End the errand because redaction failed; say what to do."""
        message = redaction_message(error)
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
        tokens = self._token_redactor()
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
                shown = tokens(msg.text)
                if shown:
                    self._emit(AgentEvent("token", text=shown, data={"step": msg.step}))
            elif isinstance(msg, Progress):
                data: dict[str, Any] = {"step": msg.step, "max_steps": msg.max_steps}
                if msg.message:
                    data["message"] = msg.message[:500]
                    self._record("conversation_reprefilled", reason=msg.message[:500])
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
                rest = tokens(None)
                if rest:
                    self._emit(AgentEvent("token", text=rest, data={}))
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
        return argv + self._backend_source()[0]

    def _backend_source(self) -> tuple[list[str], list[Path]]:
        """The worker arguments and binds that let it load a backend registered at run time."""
        if self._scripted is not None or self._spec is None or runs_in_host(self._spec):
            return [], []
        source = source_for(self._spec.backend)
        if source is None:
            return [], []
        return source_arguments([source]), [source.file]

    def _hello(self) -> tuple[Hello, list[Path]]:
        """The Hello for the worker, and the files it must be able to read."""
        if self._scripted is not None:
            return Hello(), [self._scripted]
        if self._spec is None and self._worker_argv is not None:
            return Hello(), []  # a custom worker brings its own model
        if self._relay_model is not None or is_remote(self._spec):
            model = self._relay()
            assert model is not None
            return Hello(relayed_model=model.info), []
        if self._spec is None:
            raise ModelError("no model was chosen")
        spec = self._spec
        backend = backend_for(spec)
        if backend.prepare is not None:
            # E.g. verify the embedded model here, where the digest cache is
            # writable: the agent cannot see the data dir.
            spec = spec.model_copy(update={"settings": backend.prepare(spec.settings)})
        binds = [Path(p) for p in backend.agent_files(spec.settings)]
        return Hello(model_spec=spec), binds + self._backend_source()[1]

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
            tools=offers(self._tools) + self._mcp_offers(),
            limits=self._limits,
            resample=self._resample,
            conversation=self._conversation,
            scaffold=self._scaffold,
        )

    def _mcp_offers(self) -> list[ToolOffer]:
        """The MCP tools of this errand; servers that are down are restarted first."""
        if self._mcp is None:
            return []
        for status in self._mcp.connect():
            if status.state != "up":
                text = f"MCP server {status.name!r} is {status.state}: {status.reason}"
                self._emit(AgentEvent("error", text=text))
                self._record(f"mcp_server_{status.state}", reason=status.reason,
                             details={"server": status.name})
        return self._mcp.offers()

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

    def _audit_failed(self, error: AuditWriteError, calls: list[ToolCallRecord]) -> ErrandResult:
        # The agent waits for an answer that will not come: stop it, and start
        # afresh next errand.
        self._stop_worker(kill=True)
        log.error("%s", error)
        self._emit(AgentEvent("error", text=str(error), data={"kind": "audit"}))
        return ErrandResult(outcome="error", text="", tool_calls=calls, error=str(error))

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



def new_session_id() -> str:
    """Return a fresh session id."""
    return uuid.uuid4().hex


