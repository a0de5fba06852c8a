"""The model interface every backend satisfies.

The agent executor, memory distillation and the app talk to a
:class:`ChatModel`, never to llama.cpp directly. The llama.cpp
:class:`models.runtime.Runtime`, the scripted :class:`models.fake.ScriptedModel`
and the remote OpenAI-compatible backend all satisfy this protocol, and one
contract test suite (``tests/models/contract.py``, subclassed by each
backend's tests) runs against each.

A generation is a stream of events: zero or more :class:`Token` events, then
exactly one :class:`Finished` event carrying the :class:`GenerationStats`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]
StopReason = Literal["eos", "max_tokens", "cancelled", "stop"]


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class GenerationStats(BaseModel):
    """What one generation cost and why it stopped."""

    model_config = ConfigDict(frozen=True)

    n_prompt_tokens: int = Field(description="Prompt tokens actually evaluated (not reused).")
    n_generated: int = Field(description="Tokens generated.")
    time_to_first_token_s: float | None = Field(
        description="Seconds from the call to the first generated token; None if none."
    )
    tokens_per_second: float = Field(description="Generated tokens per second of decoding.")
    n_evicted: int = Field(default=0, description="Tokens evicted by the sink cache.")
    n_shifts: int = Field(default=0, description="Times the cache window was shifted.")
    confidence: float | None = Field(
        default=None,
        description="The lowest sliding-window group confidence of the generated tokens "
        "(models.confidence; higher is surer); None when the backend gives no log-probabilities.",
    )
    stop_reason: StopReason


class Token(BaseModel):
    """A piece of generated text (one token, or several merged for UTF-8)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["token"] = "token"
    text: str


class Finished(BaseModel):
    """The last event of every generation."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["finished"] = "finished"
    text: str = Field(description="The whole generated text.")
    stats: GenerationStats


StreamEvent = Token | Finished


class ContextState(BaseModel):
    """What the KV cache holds, for the GUI's context gauge."""

    model_config = ConfigDict(frozen=True)

    n_ctx: int
    n_sink: int = Field(description="Sink tokens currently kept at the start of the cache.")
    n_window: int = Field(description="Tokens in the rolling window after the sinks.")
    n_evicted: int = Field(description="Tokens evicted since the conversation started.")
    n_shifts: int = Field(description="Window shifts since the conversation started.")
    shift_supported: bool = Field(
        description="False when the model cannot shift positions in place and overflow "
        "falls back to re-prefilling sinks plus the recent window."
    )
    n_pinned: int = Field(
        default=0,
        ge=0,
        description="Tokens the cache must never evict: the pinned "
        "prefix (sinks and instructions) plus the current task's span; 0 when only the "
        "sinks are kept.",
    )
    n_pinned_cached: int = Field(
        default=0,
        ge=0,
        description="How many of the pinned tokens the cache holds, in place; equal to "
        "n_pinned while the pins are intact.",
    )


class ModelInfo(BaseModel):
    """A description of a loaded model for display and logs."""

    model_config = ConfigDict(frozen=True)

    name: str
    backend: str = Field(description="The registered backend (models.backends) that serves it.")
    path: str | None = None
    n_ctx: int
    n_ctx_train: int | None = None
    gpu_offload_supported: bool = False
    n_gpu_layers: int = Field(
        default=0, description="The GPU layer count the model loaded with (asked; -1 = all)."
    )
    n_layers_offloaded: int = Field(
        default=0, description="Layers llama.cpp actually put on a GPU (0 on a CPU build)."
    )
    n_layers: int | None = Field(
        default=None, description="Layers that could be offloaded (repeating + output)."
    )
    rope_scaling: str = "none"


class CancelToken:
    """A thread-safe flag another thread sets to stop a generation.

    The generating thread checks it before every token, so a cancel takes
    effect within one token.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the generation to stop."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._event.is_set()


@runtime_checkable
class ChatModel(Protocol):
    """A chat model the host or the agent can drive."""

    @property
    def info(self) -> ModelInfo:
        """Describe the model."""
        ...

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
        """Generate the assistant's next message.

        Consecutive calls whose messages extend the previous call's messages
        (a conversation) reuse the cache: only the new tokens are evaluated.

        Args:
            messages: The conversation, rendered with the model's chat template.
            max_tokens: Stop after this many generated tokens.
            json_schema: Constrain the output to JSON matching this schema.
            temperature: 0 for greedy decoding.
            ignore_eos: Keep generating past end-of-sequence (benchmarks).
            cancel: Checked before every token.

        Yields:
            :class:`Token` events, then one :class:`Finished`.

        Raises:
            models.errors.ModelError: The model failed or cannot constrain output.
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Return how many tokens ``text`` takes with this model's tokenizer."""
        ...

    def context_state(self) -> ContextState:
        """Return what the KV cache holds now."""
        ...

    def reset(self) -> None:
        """Forget the conversation (clear the cache)."""
        ...

    def close(self) -> None:
        """Release the model. Safe to call twice."""
        ...


@runtime_checkable
class PinnableModel(Protocol):
    """A model whose KV cache can keep chosen messages from being evicted."""

    def pin_messages(self, prefix: int, task: int | None = None) -> None:
        """Never evict the first ``prefix`` messages nor message ``task`` of later prompts."""
        ...

    def aside(self) -> AbstractContextManager[None]:
        """Generate from a prompt of its own, then put the conversation's cache back.

        Inside the block the model may be given any prompt; when the block
        ends the KV cache holds what it held before it began, so the
        conversation's next turn evaluates only its new tokens.
        """
        ...


def complete_chat(
    model: ChatModel,
    messages: Sequence[Message],
    *,
    max_tokens: int,
    json_schema: Mapping[str, Any] | None = None,
    cancel: CancelToken | None = None,
) -> Finished:
    """Run a generation to the end and return its :class:`Finished` event.

    Raises:
        models.errors.GenerationError: The stream ended without a Finished event.
    """
    from models.errors import GenerationError

    for event in model.stream_chat(
        messages, max_tokens=max_tokens, json_schema=json_schema, cancel=cancel
    ):
        if isinstance(event, Finished):
            return event
    raise GenerationError("the model's stream ended without a final event")
