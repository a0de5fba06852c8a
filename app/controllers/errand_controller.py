"""Runs errands off the GUI thread and reports them through signals.

The :class:`ErrandController` lives in the GUI thread; the errand itself runs
in a worker object moved to a :class:`QThread`. Everything the agent host
reports (tokens, tool calls, decisions, results, the final answer, errors)
crosses back to the GUI thread as queued signals.

Permission prompts go the other way: the host calls
:meth:`_ThreadPrompt.ask` in the worker thread; it emits
:attr:`ErrandController.permissionRequested` and blocks the worker until the
GUI answers with :meth:`ErrandController.answer_permission` (or the errand is
cancelled, which denies). The GUI thread never waits for the worker.

Sessions are closed off the GUI thread, by a job on the controller's
:class:`app.controllers.jobs.SerialWorker`: "New session" closes the session
it leaves, and so does quitting (:meth:`ErrandController.shutdown`, which
waits a bounded time for it). Closing distills the session's notes into the
project's memory through the session closer the app passes in
(:func:`app.sessions.close_session`, without the model in the app, so a quit
never waits for one to load).

A credential the host withheld from a tool result arrives as a
:class:`app.withheld.CredentialOffer`; the controller keeps it in an
:class:`app.withheld.OfferBook` (one per value) until the view takes it (to
move it into the vault) or dismisses it (its value zeroed).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from app.cli_common import new_session_id
from app.controllers.jobs import SerialWorker
from app.qt import QObject, Qt, QtCore, QThread, Signal, Slot
from app.sessions import (
    SessionStore,
    SessionStoreError,
    UnknownSessionError,
    gui_transcript,
    resume_plan,
)
from app.withheld import CredentialNotice, CredentialOffer, OfferBook

log = logging.getLogger(__name__)

WhyAsked = Literal["no_rule", "tainted", "capability", "unsandboxed", "rule"]
Choice = Literal["once", "session", "always", "deny"]
RuleScope = Literal["workspace", "user"]

WHY_TEXT: dict[str, str] = {
    "no_rule": "No rule decides this call, so you are asked.",
    "rule": "A rule says to ask before this kind of call.",
    "tainted": (
        "Untrusted content (a web page, a file or a tool's output) is in the agent's "
        "context, so network calls and capability use always ask."
    ),
    "capability": "The call uses one of your capabilities (a secret the broker injects).",
    "unsandboxed": (
        "No sandbox is available: this command would run with your full user permissions."
    ),
}


@dataclass(frozen=True)
class PermissionQuestion:
    """What the permission dialog shows for one tool call."""

    call_id: str
    tool: str
    arguments: Mapping[str, Any]
    why: WhyAsked = "no_rule"
    detail: str = ""
    suggested_rule: str = ""
    rule_check: Callable[[str], str | None] | None = field(default=None, compare=False)
    """Returns why an edited rule is invalid (None when valid); set by the runner."""
    runs_code: tuple[str, ...] = ()
    """Workspace files the call writes that the user's own tools execute (one line each)."""

    @property
    def why_text(self) -> str:
        """A sentence explaining why the user is asked."""
        base = WHY_TEXT.get(self.why, WHY_TEXT["no_rule"])
        return f"{base} {self.detail}".strip() if self.detail else base

    @property
    def arguments_text(self) -> str:
        """The arguments in full, as indented JSON."""
        return json.dumps(dict(self.arguments), indent=2, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class PermissionReply:
    """The user's answer to a :class:`PermissionQuestion`."""

    choice: Choice
    rule_text: str | None = None
    scope: RuleScope = "workspace"
    reason: str = ""


_RULE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


def parse_rule_text(text: str) -> tuple[str, str]:
    """Split a rule written as ``tool(pattern)`` (or just ``tool``) into its parts.

    Raises:
        ValueError: The text is not of that form; the message names the problem.
    """
    match = _RULE_RE.match(text)
    if match is None:
        raise ValueError(
            f"rule {text!r} is not of the form tool(pattern), e.g. shell(git status)"
        )
    return match.group(1), (match.group(2) or "").strip()


class ErrandEvents(Protocol):
    """The sink a runner reports an errand's progress to (called from the worker thread)."""

    def token(self, text: str) -> None:
        """A piece of the model's streaming output."""

    def tool_call(self, call_id: str, tool: str, arguments: Mapping[str, Any]) -> None:
        """The agent asked for a tool call."""

    def decision(self, call_id: str, action: str, reason: str) -> None:
        """The policy or the user decided a call (allow / deny)."""

    def tool_result(
        self, call_id: str, ok: bool, content: str, redacted: list[str], truncated: bool
    ) -> None:
        """A tool call's (already redacted) result, as the agent receives it."""

    def final(self, text: str, stats: Mapping[str, Any]) -> None:
        """The errand's answer."""

    def error(self, message: str) -> None:
        """The errand failed; the message is for the user."""

    def agent_crashed(self, message: str) -> None:
        """The agent process died; the host is still up."""

    def notice(self, message: str) -> None:
        """Something the user should know and may act on (memory left out); the errand goes on."""

    def isolation(self, enabled: bool, detail: str) -> None:
        """Whether the agent runs under OS isolation."""

    def context(self, state: Mapping[str, Any]) -> None:
        """What the model's KV cache holds (sink, window, evicted)."""

    def model_loaded(self, info: Mapping[str, Any]) -> None:
        """The agent's model is loaded (``models.interface.ModelInfo`` fields, as loaded)."""

    def secret_found(self, offer: CredentialOffer) -> None:
        """A credential was withheld from the agent; ``offer`` may move it into the vault."""

    def egress(self, call_id: str, request: Mapping[str, Any]) -> None:
        """A request the shell call ``call_id`` sent through the egress proxy, decided.

        ``request`` holds ``method``, ``host``, ``path``, ``decision`` and ``reason``.
        """


class PermissionAsker(Protocol):
    """Asks the user about one tool call; blocks the calling (worker) thread."""

    def ask(self, question: PermissionQuestion) -> PermissionReply:
        """Return the user's answer."""


class ErrandRunner(Protocol):
    """Runs errands for one session (the agent host, or a test double)."""

    def run_errand(self, task: str) -> Any:
        """Run one errand to its end, reporting through the events sink."""

    def cancel(self) -> None:
        """Stop the running errand (thread-safe)."""

    def close(self) -> None:
        """Release the agent process and the model."""


@dataclass(frozen=True)
class RunnerContext:
    """What a runner factory gets to build a runner for one session."""

    session_id: str
    workspace: Path
    events: ErrandEvents
    asker: PermissionAsker


RunnerFactory = Callable[[RunnerContext], ErrandRunner]

SessionCloser = Callable[[str], list[str]]
"""Closes one recorded session (distills its notes); returns what it did, one line each."""

CLOSE_AT_QUIT_MS = 5000
"""How long quitting waits for the current session to be closed."""


@dataclass
class SessionInfo:
    """One chat session in the session list."""

    session_id: str
    title: str = "New session"
    created: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    transcript: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    workspace: Path | None = None
    closed: bool = False


class _PendingAnswer:
    def __init__(self, question: PermissionQuestion) -> None:
        self.question = question
        self.event = threading.Event()
        self.reply: PermissionReply | None = None


class _ErrandWorker(QObject):
    """Lives in the worker thread; every signal crosses to the GUI thread queued."""

    tokenOut = Signal(str)
    toolCallOut = Signal(str, str, object)
    decisionOut = Signal(str, str, str)
    toolResultOut = Signal(str, bool, str, object, bool)
    finalOut = Signal(str, object)
    errorOut = Signal(str)
    noticeOut = Signal(str)
    crashedOut = Signal(str)
    isolationOut = Signal(bool, str)
    contextOut = Signal(object)
    permissionNeeded = Signal(object)
    secretFoundOut = Signal(object)
    egressOut = Signal(str, object)
    modelLoadedOut = Signal(object)
    done = Signal(str)
    closed = Signal()

    def __init__(self, factory: RunnerFactory) -> None:
        super().__init__()
        self._factory = factory
        self._runner: ErrandRunner | None = None
        self._runner_session: str | None = None
        self._lock = threading.Lock()
        self._pending: _PendingAnswer | None = None
        self._cancelled = threading.Event()

    # ErrandEvents, called by the runner in this thread.
    def token(self, text: str) -> None:
        self.tokenOut.emit(text)

    def tool_call(self, call_id: str, tool: str, arguments: Mapping[str, Any]) -> None:
        self.toolCallOut.emit(call_id, tool, dict(arguments))

    def decision(self, call_id: str, action: str, reason: str) -> None:
        self.decisionOut.emit(call_id, action, reason)

    def tool_result(
        self, call_id: str, ok: bool, content: str, redacted: list[str], truncated: bool
    ) -> None:
        self.toolResultOut.emit(call_id, ok, content, list(redacted), truncated)

    def final(self, text: str, stats: Mapping[str, Any]) -> None:
        self.finalOut.emit(text, dict(stats))

    def error(self, message: str) -> None:
        self.errorOut.emit(message)

    def agent_crashed(self, message: str) -> None:
        self.crashedOut.emit(message)

    def notice(self, message: str) -> None:
        self.noticeOut.emit(message)

    def isolation(self, enabled: bool, detail: str) -> None:
        self.isolationOut.emit(enabled, detail)

    def context(self, state: Mapping[str, Any]) -> None:
        self.contextOut.emit(dict(state))

    def secret_found(self, offer: CredentialOffer) -> None:
        self.secretFoundOut.emit(offer)

    def egress(self, call_id: str, request: Mapping[str, Any]) -> None:
        self.egressOut.emit(call_id, dict(request))

    def model_loaded(self, info: Mapping[str, Any]) -> None:
        self.modelLoadedOut.emit(dict(info))

    # PermissionAsker, called by the runner in this thread.
    def ask(self, question: PermissionQuestion) -> PermissionReply:
        pending = _PendingAnswer(question)
        with self._lock:
            if self._cancelled.is_set():
                return PermissionReply("deny", reason="the errand was cancelled")
            self._pending = pending
        self.permissionNeeded.emit(question)
        pending.event.wait()
        with self._lock:
            self._pending = None
        assert pending.reply is not None
        return pending.reply

    def answer(self, call_id: str, reply: PermissionReply) -> bool:
        """Deliver the GUI's answer (any thread). False when nothing waits for it."""
        with self._lock:
            pending = self._pending
            if pending is None or pending.question.call_id != call_id:
                return False
            pending.reply = reply
            pending.event.set()
            return True

    def withdraw(self, reason: str) -> None:
        """Deny the question waiting for an answer, if any (any thread).

        The agent host calls it when the agent process died while the user was
        asked: the errand then ends, and the window dismisses the dialog.
        """
        with self._lock:
            self._deny_pending(reason)

    def _deny_pending(self, reason: str) -> None:
        # Called with self._lock held.
        pending = self._pending
        if pending is not None and pending.reply is None:
            pending.reply = PermissionReply("deny", reason=reason)
            pending.event.set()

    def cancel(self) -> None:
        """Stop the errand and release a waiting permission prompt (any thread)."""
        with self._lock:
            self._cancelled.set()
            self._deny_pending("the errand was cancelled")
            runner = self._runner
        if runner is not None:
            try:
                runner.cancel()
            except Exception as e:  # reported to the user; the errand still ends
                self.errorOut.emit(f"cancelling failed: {e}")

    def _runner_for(self, session_id: str, workspace: str) -> ErrandRunner:
        """The session's runner: the current one, or a new one when it is missing or outdated."""
        if self._needs_runner(session_id):
            self._close_runner()
            runner = self._factory(RunnerContext(session_id, Path(workspace), self, self))
            with self._lock:
                self._runner = runner
                self._runner_session = session_id
        assert self._runner is not None
        return self._runner

    @Slot(str, str, str)
    def run(self, session_id: str, workspace: str, task: str) -> None:
        self._cancelled.clear()
        try:
            runner = self._runner_for(session_id, workspace)
            if self._cancelled.is_set():
                self.errorOut.emit("the errand was cancelled before it started")
                return
            runner.run_errand(task)
        except Exception as e:
            # Any failure of the errand reaches the user as a message, never only a log line.
            log.exception("errand failed")
            self.errorOut.emit(_describe(e))
        finally:
            self.done.emit(session_id)

    @Slot(str, str, str, str)
    def resume(self, session_id: str, workspace: str, errand_id: str, choice: str) -> None:
        self._cancelled.clear()
        try:
            resume = getattr(self._runner_for(session_id, workspace), "resume_errand", None)
            if resume is None:
                self.errorOut.emit("this runner cannot resume errands")
                return
            resume(errand_id, choice)
        except Exception as e:
            log.exception("resuming failed")
            self.errorOut.emit(_describe(e))
        finally:
            self.done.emit(session_id)

    def _needs_runner(self, session_id: str) -> bool:
        """Whether a new runner must be built: none yet, another session, or outdated.

        A runner is outdated when the model settings changed since it was
        built: the change applies at this errand, on a new agent process
        (which reuses the session's saved state when it still fits the model,
        else evaluates the conversation again).
        """
        runner = self._runner
        if runner is None or self._runner_session != session_id:
            return True
        outdated = getattr(runner, "outdated", None)
        if callable(outdated) and outdated():
            self.noticeOut.emit("The model settings changed: this errand runs with the new ones.")
            return True
        return False

    def _close_runner(self) -> None:
        with self._lock:
            runner, self._runner, self._runner_session = self._runner, None, None
        if runner is not None:
            try:
                runner.close()
            except Exception as e:  # reported; closing goes on
                log.exception("closing the agent failed")
                self.errorOut.emit(f"closing the agent failed: {_describe(e)}")

    @Slot()
    def end_session(self) -> None:
        self._close_runner()

    @Slot()
    def shutdown(self) -> None:
        self._close_runner()
        self.closed.emit()


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if type(e).__name__ in text else f"{text} ({type(e).__name__})"


class ErrandController(QObject):
    """Starts, streams, cancels errands and relays permission questions.

    Args:
        runner_factory: Builds the runner for a session (the real agent host, or a
            test double); called in the worker thread.
        workspace: The workspace errands run in (changeable with :meth:`set_workspace`).
        sessions: The recorded sessions to list (they survive restarts); errands
            left running by a process that died are marked interrupted. The
            controller closes it at :meth:`shutdown`.
        session_closer: Closes a recorded session (None: sessions are never closed).
        parent: The Qt parent.

    Signals:
        sessionClosed: ``(session_id, lines)`` once a session was closed.
        sessionCloseFailed: ``(session_id, message)``; the session stays open.
    """

    busyChanged = Signal(bool)
    errandStarted = Signal(str, str)
    tokenReceived = Signal(str)
    toolCallStarted = Signal(str, str, object)
    decisionMade = Signal(str, str, str)
    egressRequested = Signal(str, object)
    toolResultReceived = Signal(str, bool, str, object, bool)
    answerReady = Signal(str, object)
    errandFailed = Signal(str)
    noticeReported = Signal(str)
    agentCrashed = Signal(str)
    isolationReported = Signal(bool, str)
    modelLoaded = Signal(object)
    statsUpdated = Signal(object)
    contextUpdated = Signal(object)
    permissionRequested = Signal(object)
    credentialFound = Signal(object)
    errandFinished = Signal(str)
    sessionsChanged = Signal()
    currentSessionChanged = Signal(str)
    sessionClosed = Signal(str, object)
    sessionCloseFailed = Signal(str, str)

    _runRequested = Signal(str, str, str)
    _resumeRequested = Signal(str, str, str, str)
    _endSessionRequested = Signal()
    _shutdownRequested = Signal()

    def __init__(
        self,
        runner_factory: RunnerFactory,
        *,
        workspace: Path | None = None,
        sessions: SessionStore | None = None,
        session_closer: SessionCloser | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._workspace = workspace
        self._store = sessions
        self._closer = session_closer
        self._jobs = SerialWorker(self)
        self._closing: set[str] = set()
        self._busy = False
        self._closed = False
        self._thread = QThread()
        self._thread.setObjectName("errand-worker")
        self._worker = _ErrandWorker(runner_factory)
        self._worker.moveToThread(self._thread)
        w = self._worker
        self._runRequested.connect(w.run)
        self._resumeRequested.connect(w.resume)
        self._endSessionRequested.connect(w.end_session)
        self._shutdownRequested.connect(w.shutdown)
        w.tokenOut.connect(self._on_token)
        w.toolCallOut.connect(self._on_tool_call)
        w.decisionOut.connect(self._on_decision)
        w.toolResultOut.connect(self._on_tool_result)
        w.finalOut.connect(self._on_final)
        w.errorOut.connect(self._on_error)
        w.crashedOut.connect(self._on_crashed)
        w.noticeOut.connect(self._on_notice)
        w.isolationOut.connect(self.isolationReported)
        w.contextOut.connect(self.contextUpdated)
        w.modelLoadedOut.connect(self.modelLoaded)
        w.permissionNeeded.connect(self._on_permission_needed)
        w.secretFoundOut.connect(self._on_secret_found)
        w.egressOut.connect(self._on_egress)
        w.done.connect(self._on_done)
        w.closed.connect(self._thread.quit, Qt.ConnectionType.DirectConnection)
        self._thread.start()
        self._sessions: dict[str, SessionInfo] = {}
        self._offers = OfferBook()
        self._current = ""
        self._t_start = 0.0
        self._t_first: float | None = None
        self._n_tokens = 0
        self._last_stats_emit = 0.0
        self._load_sessions()
        self.new_session()

    def _load_sessions(self) -> None:
        """Read the recorded sessions (the store's problems are reported, not raised)."""
        if self._store is None:
            return
        try:
            self._store.recover()
            for record in self._store.sessions():
                self._sessions[record.id] = SessionInfo(
                    record.id,
                    record.title or "New session",
                    record.updated,
                    gui_transcript(self._store.messages(record.id)),
                    workspace=Path(record.workspace),
                    closed=record.state == "closed",
                )
        except SessionStoreError as e:
            log.error("the recorded sessions could not be read: %s", e)

    def interrupted_errands(self, session_id: str) -> list[str]:
        """Ids of the session's interrupted errands (resumable), oldest first."""
        if self._store is None:
            return []
        try:
            return [e.id for e in self._store.errands(session_id) if e.state == "interrupted"]
        except SessionStoreError as e:
            log.error("the session's errands could not be read: %s", e)
            return []

    def maybe_ran(self, errand_id: str) -> str:
        """The call of an interrupted errand that may have run ("" when none)."""
        if self._store is None:
            return ""
        return resume_plan(self._store, errand_id).describe_maybe_ran()

    def resume(self, errand_id: str, choice: str = "skip") -> None:
        """Resume an interrupted errand of the current session ("again" or "skip").

        Problems are reported through :attr:`errandFailed`.
        """
        if self._busy:
            self.errandFailed.emit("an errand is already running; stop it first")
            return
        session = self._sessions.get(self._current)
        workspace = session.workspace if session and session.workspace else self._workspace
        if workspace is None:
            self.errandFailed.emit("choose a workspace folder for the errand first")
            return
        self._record("notice", f"resuming errand {errand_id}")
        self._t_start = time.monotonic()
        self._t_first = None
        self._n_tokens = 0
        self._set_busy(True)
        self._resumeRequested.emit(self._current, str(workspace), errand_id, choice)

    # -- state -----------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether an errand is running."""
        return self._busy

    @property
    def store(self) -> SessionStore | None:
        """The session store (None: sessions are not recorded); closed by :meth:`shutdown`."""
        return self._store

    @property
    def workspace(self) -> Path | None:
        """The workspace the next errand runs in."""
        return self._workspace

    def set_workspace(self, workspace: Path) -> None:
        """Run later errands in ``workspace`` (starts a new session).

        Raises:
            RuntimeError: An errand is running.
        """
        if self._busy:
            raise RuntimeError("cannot change the workspace while an errand runs")
        if workspace != self._workspace:
            self._workspace = workspace
            self.new_session()

    @property
    def current_session(self) -> str:
        """The id of the session errands are added to."""
        return self._current

    def sessions(self) -> list[SessionInfo]:
        """The sessions of this run, newest first."""
        return sorted(self._sessions.values(), key=lambda s: s.created, reverse=True)

    def session(self, session_id: str) -> SessionInfo:
        """Return one session.

        Raises:
            KeyError: No such session.
        """
        return self._sessions[session_id]

    def new_session(self) -> str:
        """Start a new, empty session and make it current; returns its id.

        The session left is closed in the background (see :meth:`close_session`).
        """
        if self._busy:
            raise RuntimeError("cannot start a new session while an errand runs")
        previous = self._current
        session_id = new_session_id()
        self._sessions[session_id] = SessionInfo(session_id)
        self._endSessionRequested.emit()
        self._current = session_id
        if previous:
            self._queue_close(previous)
        self.sessionsChanged.emit()
        self.currentSessionChanged.emit(session_id)
        return session_id

    def close_session(self, session_id: str) -> bool:
        """Close a session off the GUI thread: distill its notes, mark it closed.

        Its session-level notes go into the project's memory (untrusted ones
        wait in the review queue); :attr:`sessionClosed` or
        :attr:`sessionCloseFailed` says how it went. The session stays in
        the list; an errand run in it later opens it again.

        Returns:
            Whether closing was started (False: nothing records or closes sessions).

        Raises:
            KeyError: No such session.
            RuntimeError: Its errand is running.
        """
        if session_id not in self._sessions:
            raise KeyError(f"no session {session_id!r}")
        if self._busy and session_id == self._current:
            raise RuntimeError("cannot close the session while its errand runs")
        if session_id == self._current:
            self._endSessionRequested.emit()  # its agent stops; the next errand starts one
        return self._queue_close(session_id)

    def closing(self, session_id: str) -> bool:
        """Whether the session is being closed now."""
        return session_id in self._closing

    def _queue_close(self, session_id: str) -> bool:
        store, closer = self._store, self._closer
        if store is None or closer is None:
            return False

        def close() -> list[str] | None:  # on the job thread
            try:
                record = store.session(session_id)
            except UnknownSessionError:
                return None  # no errand ran in it: never recorded, nothing to close
            if record.state == "closed":
                return None
            return closer(session_id)

        self._closing.add(session_id)
        self._jobs.submit(
            close,
            lambda lines: self._on_session_closed(session_id, lines),
            lambda error: self._on_close_failed(session_id, error),
        )
        return True

    def _on_session_closed(self, session_id: str, lines: object) -> None:
        self._closing.discard(session_id)
        if lines is None:
            return
        info = self._sessions.get(session_id)
        if info is not None:
            info.closed = True
            self.sessionsChanged.emit()
        self.sessionClosed.emit(session_id, list(lines) if isinstance(lines, list) else [])

    def _on_close_failed(self, session_id: str, error: Exception) -> None:
        self._closing.discard(session_id)
        log.error("session %s was not closed: %s", session_id, error)
        self.sessionCloseFailed.emit(session_id, _describe(error))

    def remove_session(self, session_id: str) -> None:
        """Delete a session with its transcript and errands (its notes are not distilled).

        Removing the current session starts a new one.

        Raises:
            KeyError: No such session.
            RuntimeError: Its errand is running.
            SessionStoreError: The store could not delete it (an errand of it
                runs in another process, ...).
        """
        if session_id not in self._sessions:
            raise KeyError(f"no session {session_id!r}")
        if self._busy and session_id == self._current:
            raise RuntimeError("cannot remove the session while its errand runs")
        if self._store is not None:
            try:
                self._store.remove(session_id)
            except UnknownSessionError:
                pass  # never recorded: only this list knows it
        del self._sessions[session_id]
        if session_id == self._current:
            self._current = ""  # gone: nothing to close
            self.new_session()
        else:
            self.sessionsChanged.emit()

    def select_session(self, session_id: str) -> None:
        """Make an earlier session current.

        Raises:
            KeyError: No such session.
            RuntimeError: An errand is running.
        """
        if session_id not in self._sessions:
            raise KeyError(f"no session {session_id!r}")
        if self._busy:
            raise RuntimeError("cannot switch sessions while an errand runs")
        if session_id != self._current:
            self._endSessionRequested.emit()
            self._current = session_id
            self.currentSessionChanged.emit(session_id)

    # -- actions ---------------------------------------------------------------------

    def start(self, task: str) -> None:
        """Run ``task`` as an errand in the current session.

        Problems (empty task, no workspace, already running) are reported through
        :attr:`errandFailed`, never raised into the GUI.
        """
        task = task.strip()
        if self._closed:
            self.errandFailed.emit("the app is shutting down")
            return
        if not task:
            self.errandFailed.emit("type a task first")
            return
        if self._busy:
            self.errandFailed.emit("an errand is already running; stop it first")
            return
        if self._workspace is None:
            self.errandFailed.emit("choose a workspace folder for the errand first")
            return
        if self._current in self._closing:
            self.errandFailed.emit("the session is being closed; run the errand once it is")
            return
        session = self._sessions[self._current]
        if session.closed:
            session.closed = False  # the errand opens it again
            self.sessionsChanged.emit()
        if session.title == "New session":
            session.title = task if len(task) <= 60 else task[:57] + "..."
            self.sessionsChanged.emit()
        self._record("task", task)
        self._t_start = time.monotonic()
        self._t_first = None
        self._n_tokens = 0
        self._last_stats_emit = 0.0
        self._set_busy(True)
        # A recorded session goes on in the workspace it was started in.
        workspace = session.workspace or self._workspace
        session.workspace = workspace
        self.errandStarted.emit(self._current, task)
        self._runRequested.emit(self._current, str(workspace), task)

    def cancel(self) -> None:
        """Stop the running errand (within a token); a pending prompt is denied."""
        if self._busy:
            self._worker.cancel()

    def answer_permission(self, call_id: str, reply: PermissionReply) -> None:
        """Answer the question the worker is waiting on."""
        if not self._worker.answer(call_id, reply):
            log.warning("no permission question %s is waiting", call_id)

    def pending_offers(self) -> list[CredentialNotice]:
        """The withheld credentials still offered for the vault (never their values)."""
        return self._offers.pending()

    def take_offer(self, offer_id: str) -> CredentialOffer | None:
        """Hand an offer and its value over (to move it into the vault); None if gone.

        The caller owns the value from now on and must zero it
        (:meth:`app.withheld.CredentialOffer.discard`).
        """
        return self._offers.take(offer_id)

    def dismiss_offer(self, offer_id: str) -> None:
        """Drop an offer; its value is zeroed here and not offered again."""
        self._offers.dismiss(offer_id)

    def shutdown(self, timeout_ms: int = 10_000, close_ms: int = CLOSE_AT_QUIT_MS) -> bool:
        """Cancel, close the agent (and its model), stop the worker thread, close the session.

        The current session is closed (its notes distilled, without a model)
        within ``close_ms``; one not closed by then stays open. The session
        store is closed last, once nothing uses it.

        Returns:
            True when the worker stopped within ``timeout_ms``.
        """
        if self._closed:
            return True
        self._closed = True
        self._offers.clear()
        self._worker.cancel()
        # The worker quits its thread itself once it has closed the runner, so a
        # running errand first ends, then the agent (and its model) is closed.
        self._shutdownRequested.emit()
        stopped = bool(self._thread.wait(timeout_ms))
        if not stopped:
            log.error("the errand worker did not stop within %d ms", timeout_ms)
        if self._current:
            self._queue_close(self._current)
        closed = self._jobs.wait(close_ms)
        if not closed:
            log.error("closing the session did not finish within %d ms; it stays open", close_ms)
        if self._store is not None and stopped and closed:
            self._store.close()
        return stopped

    # -- relays (GUI thread) ---------------------------------------------------------

    def _record(self, kind: str, *args: Any) -> None:
        self._sessions[self._current].transcript.append((kind, args))

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busyChanged.emit(busy)

    def live_stats(self) -> dict[str, Any]:
        """Tokens/s and time to first token of the running (or last) errand, host-measured.

        Time to first token counts from the moment the errand was started, so
        it includes starting the agent and loading the model the first time.
        """
        now = time.monotonic()
        stats: dict[str, Any] = {"n_generated": self._n_tokens}
        if self._t_first is not None:
            stats["time_to_first_token_s"] = self._t_first - self._t_start
            span = now - self._t_first
            if self._n_tokens > 1 and span > 0:
                stats["tokens_per_second"] = (self._n_tokens - 1) / span
        return stats

    @Slot(str)
    def _on_token(self, text: str) -> None:
        now = time.monotonic()
        if self._t_first is None:
            self._t_first = now
        self._n_tokens += 1
        self.tokenReceived.emit(text)
        if now - self._last_stats_emit >= 0.25:
            self._last_stats_emit = now
            self.statsUpdated.emit(self.live_stats())

    @Slot(str, str, object)
    def _on_tool_call(self, call_id: str, tool: str, arguments: object) -> None:
        self._record("tool_call", call_id, tool, arguments)
        self.toolCallStarted.emit(call_id, tool, arguments)

    @Slot(str, str, str)
    def _on_decision(self, call_id: str, action: str, reason: str) -> None:
        self._record("decision", call_id, action, reason)
        self.decisionMade.emit(call_id, action, reason)

    @Slot(str, object)
    def _on_egress(self, call_id: str, request: object) -> None:
        self._record("egress", call_id, request)
        self.egressRequested.emit(call_id, request)

    @Slot(str, bool, str, object, bool)
    def _on_tool_result(
        self, call_id: str, ok: bool, content: str, redacted: object, truncated: bool
    ) -> None:
        self._record("tool_result", call_id, ok, content, redacted, truncated)
        self.toolResultReceived.emit(call_id, ok, content, redacted, truncated)

    @Slot(str, object)
    def _on_final(self, text: str, stats: object) -> None:
        self._record("final", text, stats)
        self.answerReady.emit(text, stats)
        merged = self.live_stats() | (dict(stats) if isinstance(stats, Mapping) else {})
        self.statsUpdated.emit(merged)

    @Slot(str)
    def _on_error(self, message: str) -> None:
        self._record("error", message)
        self.errandFailed.emit(message)

    @Slot(str)
    def _on_notice(self, message: str) -> None:
        self._record("notice", message)
        self.noticeReported.emit(message)

    @Slot(str)
    def _on_crashed(self, message: str) -> None:
        self._record("error", f"the agent process crashed: {message}")
        self.agentCrashed.emit(message)

    @Slot(object)
    def _on_permission_needed(self, question: object) -> None:
        assert isinstance(question, PermissionQuestion)
        signal = QtCore.QMetaMethod.fromSignal(self.permissionRequested)
        if not self.isSignalConnected(signal):  # nobody to ask: never leave the worker hanging
            self._worker.answer(
                question.call_id, PermissionReply("deny", reason="no one was there to ask")
            )
            return
        self.permissionRequested.emit(question)

    @Slot(object)
    def _on_secret_found(self, offer: object) -> None:
        assert isinstance(offer, CredentialOffer)
        if self._closed:
            offer.discard()
        elif self._offers.add(offer):
            self._record("withheld", offer.notice.text)
            self.credentialFound.emit(offer.notice)

    @Slot(str)
    def _on_done(self, session_id: str) -> None:
        self._set_busy(False)
        self.errandFinished.emit(session_id)
