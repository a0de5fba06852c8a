"""The agent process's side of a relayed generation, for remote models.

The agent process has no network and never sees an API key, so it cannot talk
to a remote OpenAI-compatible server itself. :class:`RelayedModel` is the
:class:`models.interface.ChatModel` the executor uses instead: each
``stream_chat`` sends a :class:`agent.protocol.ModelRequest` to the host and
yields the :class:`agent.protocol.ModelChunk` events the host sends back.
:mod:`agent.host.relay` is the host's side: it runs the request on the real
model (which holds the key) and streams the answer down the pipe.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from agent.protocol import (
    AnyMessage,
    HostMessage,
    ModelCancel,
    ModelChunk,
    ModelDone,
    ModelFailed,
    ModelRequest,
)
from models.errors import GenerationError
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

CHARS_PER_TOKEN = 4
"""The agent process has no tokenizer for a remote model; counts are estimates."""


class RelayChannel(Protocol):
    """The agent process's end of the pipe, as the relay needs it."""

    def send(self, msg: AnyMessage) -> None:
        """Send one message to the host."""
        ...

    def receive(self, cancel: CancelToken) -> HostMessage | None:
        """Wait for the next host message; None when ``cancel`` fired or the pipe closed."""
        ...


class RelayedModel:
    """A :class:`ChatModel` whose generations run on the host.

    Args:
        channel: The pipe to the host.
        info: The description of the host's model (from the Hello message).
    """

    def __init__(self, channel: RelayChannel, info: ModelInfo) -> None:
        self._channel = channel
        self._info = info
        self._ids = itertools.count(1)

    @property
    def info(self) -> ModelInfo:
        """Describe the host's model."""
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
        """Ask the host for a generation and yield its chunks.

        Raises:
            models.errors.GenerationError: The host's model failed, or the pipe
                closed mid-generation.
        """
        cancel = cancel or CancelToken()
        request_id = f"m{next(self._ids)}"
        self._channel.send(
            ModelRequest(
                request_id=request_id,
                messages=list(messages),
                max_tokens=max_tokens,
                json_schema=dict(json_schema) if json_schema is not None else None,
                temperature=temperature,
            )
        )
        pieces: list[str] = []
        while True:
            msg = self._channel.receive(cancel)
            if msg is None:
                if not cancel.cancelled:
                    raise GenerationError("the host closed the pipe during a relayed generation")
                self._channel.send(ModelCancel(request_id=request_id))
                yield Finished(text="".join(pieces), stats=_cancelled_stats(len(pieces)))
                return
            if getattr(msg, "request_id", None) != request_id:
                continue  # a late answer to a generation this side already gave up
            if isinstance(msg, ModelChunk):
                pieces.append(msg.text)
                yield Token(text=msg.text)
            elif isinstance(msg, ModelDone):
                yield Finished(text=msg.text, stats=msg.stats)
                return
            elif isinstance(msg, ModelFailed):
                raise GenerationError(f"the host's model failed: {msg.message}")

    def count_tokens(self, text: str) -> int:
        """Estimate the token count (the tokenizer lives with the remote model)."""
        return math.ceil(len(text.encode("utf-8")) / CHARS_PER_TOKEN)

    def context_state(self) -> ContextState:
        """Report the remote context size; the cache itself is not visible from here."""
        return ContextState(
            n_ctx=self._info.n_ctx,
            n_sink=0,
            n_window=0,
            n_evicted=0,
            n_shifts=0,
            shift_supported=False,
        )

    def reset(self) -> None:
        """Nothing to forget on this side: every request carries the whole conversation."""

    def close(self) -> None:
        """Nothing to release on this side."""


def _cancelled_stats(n_generated: int) -> GenerationStats:
    return GenerationStats(
        n_prompt_tokens=0,
        n_generated=n_generated,
        time_to_first_token_s=None,
        tokens_per_second=0.0,
        stop_reason="cancelled",
    )
