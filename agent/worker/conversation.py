"""One session's conversation, kept by the agent process across errands.

A session is one conversation: the system message (instructions, tools,
capability handles, memory) is built once and stays byte-identical while
nothing in it changes, and every errand appends its task, each step, each
tool result and the answer. The model's KV cache holds the same tokens, so a
new errand evaluates only its new tokens.

When the system message must change (memory edited, a grant added or
revoked), it is replaced in place and the caller says so: the whole
conversation is evaluated again, deliberately.

Before the cache would have to evict, old tool results are masked: replaced
by a one-line stub naming the tool, its arguments and how to get the result
again (observation masking, as in Lindenbauer et al., 2025, "The Complexity
Trap"). Only when masking is not enough does the sink cache evict.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.protocol import Task
from agent.worker.prompt import system_message
from models.interface import Message

MASK_AT = 0.75
"""Mask old tool results once the conversation would fill this share of n_ctx."""

MASK_TO = 0.5
"""Mask until the conversation fits in this share of n_ctx (or nothing is left to mask)."""

MESSAGE_OVERHEAD = 4
"""Template tokens around each message (role markers), for the size estimate."""

INSTRUCTIONS_CHANGED = (
    "The agent's instructions changed (memory, capability handles or tools): "
    "the conversation is evaluated again."
)


def mask_stub(tool: str, arguments: dict[str, Any], call_id: str) -> str:
    """The one line that replaces a masked tool result."""
    args = json.dumps(arguments, sort_keys=True, ensure_ascii=False)
    if len(args) > 200:
        args = args[:200] + "…"
    return (
        f"[The result of {tool} {args} (call {call_id}) was removed to save context; "
        "call the tool again with these arguments to see it.]"
    )


@dataclass
class Conversation:
    """The messages of one session so far.

    Attributes:
        key: The host's conversation id (a new one starts a new conversation).
        nonce: The memory fence's nonce, fixed for the conversation so the
            system message stays byte-identical.
        messages: The system message, then every turn.
    """

    key: str
    nonce: str
    messages: list[Message]
    _stubs: dict[int, str] = field(default_factory=dict)
    _sizes: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, task: Task) -> Conversation:
        """A new conversation for ``task``'s session, seeded with the host's history."""
        nonce = secrets.token_hex(8)
        history = [m for m in task.history if m.role in ("user", "assistant")]
        system = system_message(task, task.tools, nonce=nonce)
        return cls(key=task.conversation, nonce=nonce, messages=[system, *history])

    def continues(self, task: Task) -> bool:
        """Whether ``task`` belongs to this conversation."""
        return bool(task.conversation) and task.conversation == self.key

    def update_system(self, task: Task) -> bool:
        """Rebuild the system message for ``task``; True when it changed."""
        system = system_message(task, task.tools, nonce=self.nonce)
        if system.content == self.messages[0].content:
            return False
        self.messages[0] = system
        del self._sizes[:]
        return True

    def add_result(self, message: Message, stub: str) -> None:
        """Append a tool result that may later be masked by ``stub``."""
        self._stubs[len(self.messages)] = stub
        self.messages.append(message)

    def fit(self, n_ctx: int, count: Callable[[str], int], *, keep_from: int) -> int:
        """Mask the oldest tool results until the conversation fits.

        Nothing happens while the estimate stays under :data:`MASK_AT` of
        ``n_ctx``; then results are masked, oldest first, until it is under
        :data:`MASK_TO`. The latest result at or after ``keep_from`` (the
        current step's input) is never masked.

        Args:
            n_ctx: The model's context size in tokens.
            count: Counts the tokens of a text.
            keep_from: Index of the current task's message.

        Returns:
            How many results were masked.
        """
        sizes = self._measure(count)
        total = sum(sizes)
        if total <= MASK_AT * n_ctx:
            return 0
        latest = max((i for i in self._stubs if i >= keep_from), default=None)
        masked = 0
        for i in sorted(self._stubs):
            if total <= MASK_TO * n_ctx:
                break
            if i == latest:
                continue
            stub = self._stubs.pop(i)
            self.messages[i] = Message(role=self.messages[i].role, content=stub)
            new = count(stub) + MESSAGE_OVERHEAD
            total += new - sizes[i]
            sizes[i] = new
            masked += 1
        return masked

    def _measure(self, count: Callable[[str], int]) -> list[int]:
        """Token estimate of each message (cached; messages only change by masking)."""
        for m in self.messages[len(self._sizes) :]:
            self._sizes.append(count(m.content) + MESSAGE_OVERHEAD)
        return self._sizes

    def dump(self) -> dict[str, Any]:
        """The conversation as JSON-able data (saved with the KV state)."""
        return {
            "key": self.key,
            "nonce": self.nonce,
            "messages": [m.model_dump() for m in self.messages],
            "stubs": {str(i): stub for i, stub in self._stubs.items()},
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> Conversation:
        """The conversation :meth:`dump` saved.

        Raises:
            ValueError: The data is not a dumped conversation.
        """
        try:
            messages = [Message.model_validate(m) for m in data["messages"]]
            stubs = {int(i): str(s) for i, s in dict(data["stubs"]).items()}
            key, nonce = str(data["key"]), str(data["nonce"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a saved conversation: {e}") from e
        if not messages or messages[0].role != "system":
            raise ValueError("not a saved conversation: it does not start with instructions")
        return cls(key=key, nonce=nonce, messages=messages, _stubs=stubs)
