"""The host's side of saved KV state: when to save, when to restore, what to report.

When a session is left (the host closes: app quit, another session chosen,
``keyless run --session`` ending) the agent process is asked to save its KV
state and conversation (:class:`~agent.protocol.SaveState`) into the
session's own directory of the state store, bound to the model file's
sha256 (hashed here, where the digest cache is writable) and a digest of the
session's history as the host knows it. When a session's history is given
to a host (reopened), the first errand first asks the agent to restore that
state (:class:`~agent.protocol.RestoreState`); only when that fails does the
conversation start afresh from the history, as without a state. A refused
state (stale, corrupt, truncated) is reported once (an event, so the
transcript has it, and the audit log) and deleted; a missing one is silent.

The agent process can write only its own session's directory (bound
read-write into its sandbox), never another session's state.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import AgentCrashedError, ProtocolError
from agent.host.events import AgentEvent
from agent.protocol import AgentErrorMsg, RestoreState, SaveState, StateReply
from models.kvstate import KVStateError, ModelHashes, StateStore

if TYPE_CHECKING:
    from agent.host.supervisor import WorkerProcess
    from models.interface import Message

log = logging.getLogger(__name__)

STATE_TIMEOUT_S = 30.0
"""How long a save or restore may take in the agent process (a silent one delays a quit)."""


def history_digest(history: Sequence[Message]) -> str:
    """A digest of the session's turns, binding a saved state to them."""
    data = json.dumps([[m.role, m.content] for m in history], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


class SavedStates:
    """Mixin of :class:`agent.host.errand.AgentHost`: save and restore the agent's KV state."""

    # Provided by AgentHost.
    session_id: str
    _proc: WorkerProcess | None
    _history: list[Message]
    _conversation: str
    _kv_store: StateStore | None
    _model_hashes: ModelHashes | None
    _model_path: Path | None
    _restore_pending: bool

    if TYPE_CHECKING:  # provided by AgentHost's other bases; never shadow them

        def _emit(self, event: AgentEvent) -> None: ...  # noqa: D102 - see delivery
        def _record(self, kind: str, **kwargs: Any) -> None: ...  # noqa: D102 - see delivery

    def state_dir(self) -> Path | None:
        """This session's directory in the state store (the agent may write it), or None."""
        if self._kv_store is None:
            return None
        try:
            return self._kv_store.path_for(self.session_id).parent
        except KVStateError:
            return None

    def save_state(self) -> StateReply | None:
        """Ask the agent process to save its KV state for this session.

        Returns:
            The agent's reply, or None when there is nothing to save (no
            store, no agent process, no model file, no errand yet).
        """
        proc, store = self._proc, self._kv_store
        if proc is None or store is None or self._model_path is None or not self._history:
            return None
        try:
            path = store.path_for(self.session_id)
            sha = self._model_sha()
        except KVStateError as e:
            log.warning("KV state not saved: %s", e)
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        request = SaveState(
            path=str(path), history=history_digest(self._history), model_sha256=sha
        )
        reply = self._ask_state(proc, request)
        if reply is None:
            return None
        if reply.ok:
            self._record(
                "kv_state_saved", details={"tokens": reply.n_tokens, "bytes": reply.size}
            )
            try:
                removed = store.enforce_cap(keep=self.session_id)
            except KVStateError as e:
                log.warning("the KV state cap was not enforced: %s", e)
                removed = []
            if removed:
                self._record("kv_state_evicted", details={"sessions": removed})
        else:
            log.info("KV state not saved: %s", reply.message)
        return reply

    def restore_state(self) -> StateReply | None:
        """Ask the agent process to restore this session's saved KV state.

        On success the next errand continues the restored conversation. A
        refused state is reported once and deleted; the conversation then
        starts afresh from the history.

        Returns:
            The agent's reply, or None when no state was saved (or no agent runs).
        """
        self._restore_pending = False
        proc, store = self._proc, self._kv_store
        if proc is None or store is None or self._model_path is None:
            return None
        try:
            path = store.path_for(self.session_id)
        except KVStateError:
            return None
        if not path.is_file():
            return None
        try:
            sha = self._model_sha()
        except KVStateError as e:
            sha = ""
            log.info("model not hashed here (%s); the agent hashes it", e)
        request = RestoreState(
            path=str(path), history=history_digest(self._history), model_sha256=sha
        )
        reply = self._ask_state(proc, request)
        if reply is None:
            return None
        if reply.ok:
            self._conversation = reply.conversation
            self._record(
                "kv_state_restored", details={"tokens": reply.n_tokens, "bytes": reply.size}
            )
            return reply
        text = (
            f"The saved model state of this session was not used ({reply.message}); "
            "the conversation is evaluated again from the transcript."
        )
        self._emit(AgentEvent("notice", text=text, data={"kind": "kv_state"}))
        self._record("kv_state_refused", reason=reply.message[:500])
        try:
            store.remove(self.session_id)
        except KVStateError as e:
            log.warning("the refused KV state stays: %s", e)
        return reply

    def _model_sha(self) -> str:
        assert self._model_path is not None
        hashes = self._model_hashes or ModelHashes()
        return hashes.sha256(self._model_path)

    def _ask_state(
        self, proc: WorkerProcess, request: SaveState | RestoreState
    ) -> StateReply | None:
        """Send a state request and wait for its reply (None: the agent failed)."""
        try:
            proc.send(request)
            while True:
                msg = proc.receive(STATE_TIMEOUT_S)
                if isinstance(msg, StateReply):
                    return msg
                if isinstance(msg, AgentErrorMsg):  # e.g. a worker that knows no states
                    action: Any = "save" if isinstance(request, SaveState) else "restore"
                    return StateReply(action=action, ok=False, message=msg.message[:2000])
                log.info("ignored a %s while waiting for the KV state", msg.type)
        except (AgentCrashedError, ProtocolError) as e:
            log.warning("the agent failed during a KV state %s: %s", request.type, e)
            return None
