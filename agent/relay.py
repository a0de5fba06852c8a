"""Generations relayed through the host, for remote models (issue 8).

The agent process has no network and never sees an API key, so it cannot talk
to a remote OpenAI-compatible server itself. :class:`RelayedModel` is the
:class:`models.interface.ChatModel` the executor uses instead: each
``stream_chat`` sends a :class:`agent.protocol.ModelRequest` to the host and
yields the :class:`agent.protocol.ModelChunk` events the host sends back.
:func:`serve_model_request` is the host's side: it runs the request on the real
model (which holds the key) and streams the answer down the pipe, through a
streaming redactor when it is given one: a remote server may echo a vault
secret (the API key it was sent, a key pasted into the conversation), and
nothing a server says reaches the agent process unredacted.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from models.errors import GenerationError, ModelError
from models.interface import (
    CancelToken,
    ChatModel,
    ContextState,
    Finished,
    GenerationStats,
    Message,
    ModelInfo,
    StreamEvent,
    Token,
)
from vault.errors import VaultError

CHARS_PER_TOKEN = 4
"""The agent process has no tokenizer for a remote model; counts are estimates."""


class StreamRedaction(Protocol):
    """A streaming redactor (:class:`vault.redact.StreamRedactor`'s interface).

    Both methods raise :class:`vault.errors.VaultError` when redaction cannot
    run; the stream is unusable afterwards.
    """

    def feed(self, chunk: str) -> str:
        """Add a chunk; return the text that is now safe to release."""
        ...

    def finish(self) -> str:
        """Release everything still held back, redacted."""
        ...


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


def serve_model_request(
    model: ChatModel,
    request: ModelRequest,
    send: Callable[[AnyMessage], None],
    cancel: CancelToken,
    *,
    redaction: Callable[[], StreamRedaction] | None = None,
) -> None:
    """Run a relayed generation on the host's model and stream it to the agent.

    Every outcome ends with exactly one :class:`ModelDone` or
    :class:`ModelFailed`, so the agent never waits forever. Errors of the
    model are reported to the agent by their message only: a remote model's
    errors never carry the API key (models.remote's contract).

    With ``redaction``, every chunk goes through one stream of it (which
    holds back what may still turn out to be a secret) and the final text
    through another. If redaction cannot run, nothing more of the generation
    is sent: the agent gets :class:`ModelFailed` (fail closed), and when
    that happens before the model starts, the model is not asked at all.

    Args:
        model: The host's model (e.g. models.remote.OpenAIChatModel).
        request: The agent's request.
        send: Writes one message to the agent process.
        cancel: Fired when the user cancels the errand.
        redaction: Makes a fresh streaming redactor.
    """
    rid = request.request_id
    try:
        chunks = redaction() if redaction is not None else None
    except VaultError as e:
        send(ModelFailed(request_id=rid, message=_withheld(e)))
        return
    events: Iterator[StreamEvent] | None = None
    try:
        events = model.stream_chat(
            request.messages,
            max_tokens=request.max_tokens,
            json_schema=request.json_schema,
            temperature=request.temperature,
            cancel=cancel,
        )
        for event in events:
            if isinstance(event, Token):
                text = event.text if chunks is None else chunks.feed(event.text)
                if text:
                    send(ModelChunk(request_id=rid, text=text))
            elif isinstance(event, Finished):
                text = event.text
                if chunks is not None and redaction is not None:
                    rest = chunks.finish()
                    if rest:
                        send(ModelChunk(request_id=rid, text=rest))
                    whole = redaction()
                    text = whole.feed(text) + whole.finish()
                send(ModelDone(request_id=rid, text=text, stats=event.stats))
                return
    except ModelError as e:
        send(ModelFailed(request_id=rid, message=str(e) or type(e).__name__))
        return
    except VaultError as e:
        close = getattr(events, "close", None)  # a generator holds the model until closed
        if close is not None:
            close()
        send(ModelFailed(request_id=rid, message=_withheld(e)))
        return
    send(ModelFailed(request_id=rid, message="the model's stream ended early"))


def _withheld(error: VaultError) -> str:
    return f"the model's output could not be checked for secrets, so it is withheld: {error}"
