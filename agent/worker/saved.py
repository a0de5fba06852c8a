"""Save and restore a session's KV state in the agent process.

The host asks between errands (:class:`~agent.protocol.SaveState`,
:class:`~agent.protocol.RestoreState`); the model saves its cache with the
conversation the executor holds (:mod:`models.kvstate` checks and binds the
file), and a restore makes that conversation the executor's again, so the
next task continues it and evaluates only its new tokens. Every failure is a
:class:`~agent.protocol.StateReply` with ``ok`` False and the reason: the
host then lets the conversation be re-prefilled from its history.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agent.protocol import RestoreState, SaveState, StateReply
from agent.worker.conversation import Conversation
from agent.worker.executor import Executor
from models.errors import ModelError
from models.interface import Message

log = logging.getLogger(__name__)


@runtime_checkable
class StatefulModel(Protocol):
    """A model whose KV state can be saved (:class:`models.runtime.Runtime`)."""

    def save_state(
        self,
        path: Path,
        *,
        history: str = "",
        meta: Mapping[str, Any] | None = None,
        model_sha256: str | None = None,
    ) -> Any:
        """Save the KV state (see :meth:`models.runtime.Runtime.save_state`)."""
        ...

    def restore_state(
        self, path: Path, *, history: str = "", model_sha256: str | None = None
    ) -> Any:
        """Restore the KV state (see :meth:`models.runtime.Runtime.restore_state`)."""
        ...

    def reset(self) -> None:
        """Forget the conversation."""
        ...

    def settle(self, messages: Sequence[Message]) -> int:
        """Evaluate the tokens of messages the cache lacks (see ``Runtime.settle``)."""
        ...


def handle(msg: SaveState | RestoreState, model: object, executor: Executor) -> StateReply:
    """Run one save or restore request; never raises for a refused state."""
    action: Any = "save" if isinstance(msg, SaveState) else "restore"
    if not isinstance(model, StatefulModel):
        return StateReply(action=action, ok=False, message="this model cannot save its KV state")
    path = Path(msg.path)
    sha = msg.model_sha256 or None
    try:
        if isinstance(msg, SaveState):
            conv = executor.conversation
            if conv is None:
                return StateReply(action="save", ok=False, message="no conversation to save")
            # The turns the last errand appended without generating from them
            # are evaluated now, when the session is left, not when it is
            # reopened and the user waits for the first token.
            model.settle(conv.messages)
            info = model.save_state(
                path, history=msg.history, meta={"conversation": conv.dump()}, model_sha256=sha
            )
            return StateReply(
                action="save", ok=True, conversation=conv.key, n_tokens=info.n_tokens,
                size=info.size,
            )
        info = model.restore_state(path, history=msg.history, model_sha256=sha)
        try:
            conv = Conversation.load(info.meta.get("conversation"))
        except ValueError as e:
            model.reset()
            executor.forget()
            return StateReply(action="restore", ok=False, message=f"the saved state {e}")
        executor.adopt(conv)
        return StateReply(
            action="restore", ok=True, conversation=conv.key, n_tokens=info.n_tokens,
            size=info.size,
        )
    except ModelError as e:
        log.info("%s of the KV state refused: %s", action, e)
        if action == "restore":
            executor.forget()
        return StateReply(action=action, ok=False, message=str(e)[:2000])
